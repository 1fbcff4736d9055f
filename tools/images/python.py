"""The Python images: a Debian runtime base (mmdebstrap), one venv layer, and the programs.

    layer 1  Debian bookworm essential + python3, python3-venv, ca-certificates; byte code
             compiled with unchecked hashes (valid on a read-only root, whatever the file times)
    layer 2  /venv: `pip install` of DISTRIBUTIONS (operator) or SDK_DISTRIBUTIONS (agent, demo
             API), as the Dockerfile's build stage does
    layer 3  (agent, demo API) the example programs from examples/agent-demo/

Layers are cached in <cache>/image-build by the hash of their inputs; the base is shared by all
three images and the SDK venv by the agent and demo API (same digests: the node stores them once).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Callable
from pathlib import Path

from images import oci
from images.build import Hasher, debian_version, ensure_debian_packages, fresh_dir, log, output, run, work_dir
from images.dockerfile import runtime_config
from images.recipes import (
    BASE_ENV,
    DEBIAN_PACKAGES,
    DEBIAN_SUITE,
    DISTRIBUTIONS,
    HERE,
    MMDEBSTRAP_OPTIONS,
    NONROOT,
    RECIPE_VERSION,
    REPO,
    SDK_DISTRIBUTIONS,
    Built,
    Recipe,
)

DOCKERFILE = REPO / "Dockerfile"
DEMO_DIR = REPO / "examples" / "agent-demo"
# Inside the chroot (and the image).
VENV = "/venv"
PYTHON = "/usr/bin/python3"
# The minor version of Debian bookworm's python3 (what the wheels are downloaded for).
BASE_PYTHON = "3.11"
# What the build leaves in the rootfs that no image should carry.
_DROP_PREFIXES = ("dev/", "proc/", "sys/", "run/", "tmp/", "var/cache/apt/", "var/lib/apt/lists/", "var/log/")
_DROP_FILES = {"etc/resolv.conf", "etc/hostname", "etc/machine-id"}


def apt_sources() -> list[Path]:
    """The host's apt sources: mmdebstrap without a mirror argument uses them."""
    files = [Path("/etc/apt/sources.list")] if Path("/etc/apt/sources.list").exists() else []
    directory = Path("/etc/apt/sources.list.d")
    if directory.is_dir():
        files += sorted(p for p in directory.iterdir() if p.suffix in {".list", ".sources"})
    return files


def _cached_layer(kind: str, key: str, make: Callable[[Path], oci.Layer]) -> oci.Layer:
    """A layer stored as <work>/<kind>-<key>.tar.gz (+ .diffid), made by `make(scratch)` once."""
    blob = work_dir() / f"{kind}-{key[:20]}.tar.gz"
    diff_id = blob.with_suffix(".diffid")
    if blob.exists() and diff_id.exists():
        return oci.Layer(compressed=blob.read_bytes(), diff_id=diff_id.read_text().strip())
    for old in work_dir().glob(f"{kind}-*"):
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    layer = make(work_dir() / f"{kind}-{key[:20]}")
    blob.with_suffix(".partial").write_bytes(layer.compressed)
    diff_id.write_text(layer.diff_id + "\n")
    blob.with_suffix(".partial").replace(blob)
    return layer


class PythonBase:
    """Layer 1, and the rootfs it came from (kept: the venv is built in it with chroot)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def prepare(self) -> None:
        ensure_debian_packages(["mmdebstrap"])

    def inputs(self, hasher: Hasher) -> None:
        # RECIPE_VERSION: bump it when the steps below (compileall, the nonroot user) change.
        hasher.text(
            "base",
            RECIPE_VERSION,
            DEBIAN_SUITE,
            *DEBIAN_PACKAGES,
            *MMDEBSTRAP_OPTIONS,
            *BASE_ENV,
            str(NONROOT),
        )
        hasher.text(debian_version("mmdebstrap"))
        for source in apt_sources():
            hasher.file(source)

    def key(self) -> str:
        hasher = Hasher("python-base").text(str(self.epoch))
        self.inputs(hasher)
        return hasher.hexdigest()

    def rootfs(self) -> Path:
        return work_dir() / f"python-rootfs-{self.key()[:20]}"

    def layer(self) -> oci.Layer:
        key = self.key()
        layer = _cached_layer("base", key, lambda scratch: self._make(scratch))
        if not self.rootfs().exists():
            # The layer survived but the rootfs was removed: unpack the layer again for chroot.
            self._unpack(layer)
        return layer

    def _make(self, scratch: Path) -> oci.Layer:
        fresh_dir(scratch)
        debian_tar = scratch / "debian.tar"
        log(f"python base: mmdebstrap {DEBIAN_SUITE} {' '.join(DEBIAN_PACKAGES)} (a minute or two)")
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(self.epoch)}
        transcript = work_dir() / "mmdebstrap.log"
        with transcript.open("w") as out:
            debootstrap = subprocess.run(
                [
                    "mmdebstrap",
                    "--quiet",
                    *MMDEBSTRAP_OPTIONS,
                    f"--include={','.join(DEBIAN_PACKAGES)}",
                    DEBIAN_SUITE,
                    debian_tar,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if debootstrap.returncode:
            raise SystemExit(f"mmdebstrap failed ({debootstrap.returncode}); its output: {transcript}")
        for old in work_dir().glob("python-rootfs-*"):
            shutil.rmtree(old)
        rootfs = self.rootfs()
        partial = fresh_dir(rootfs.with_name(rootfs.name + ".partial"))
        with tarfile.open(debian_tar) as tar:
            # Our own mmdebstrap output, unpacked as root with owners and modes as they are.
            tar.extractall(partial, filter="fully_trusted")  # noqa: S202
        self._finish(partial)
        partial.replace(rootfs)
        layer = oci.LayerWriter(self.epoch)
        layer.add_tree(rootfs, owner=None)
        layer.discard(_keep_in_image)
        built = layer.build()
        shutil.rmtree(scratch)
        return built

    def _finish(self, rootfs: Path) -> None:
        # Byte code that stays valid on a read-only root whatever the file times: mmdebstrap clamps
        # newer times to SOURCE_DATE_EPOCH, which makes Debian's own timestamp-checked .pyc stale.
        result = chroot(
            rootfs,
            [
                PYTHON,
                "-m",
                "compileall",
                "-q",
                "-f",
                "-j0",
                "--invalidation-mode",
                "unchecked-hash",
                "/usr/lib/python3.11",
                "/usr/lib/python3/dist-packages",
            ],
            check=False,
        )
        if result.returncode:
            # lib2to3's test data holds deliberately broken files; everything else compiled.
            log("python base: compileall skipped files it cannot compile (lib2to3 test data)")
        with (rootfs / "etc/passwd").open("a") as passwd:
            passwd.write(f"nonroot:x:{NONROOT}:{NONROOT}:nonroot:/nonexistent:/usr/sbin/nologin\n")
        with (rootfs / "etc/group").open("a") as group:
            group.write(f"nonroot:x:{NONROOT}:\n")

    def _unpack(self, layer: oci.Layer) -> None:
        import io

        partial = fresh_dir(self.rootfs().with_name(self.rootfs().name + ".partial"))
        with tarfile.open(fileobj=io.BytesIO(layer.compressed), mode="r:gz") as tar:
            tar.extractall(partial, filter="fully_trusted")  # noqa: S202 (the base layer we made)
        # What the image leaves to the runtime but building in a chroot needs: a few devices, and
        # /dev/shm for the semaphores of compileall's worker processes.
        (partial / "dev" / "shm").mkdir(parents=True, exist_ok=True)
        (partial / "dev" / "shm").chmod(0o1777)
        for node, major_minor in {"null": (1, 3), "zero": (1, 5), "urandom": (1, 9)}.items():
            os.mknod(partial / "dev" / node, 0o20666, os.makedev(*major_minor))
        partial.replace(self.rootfs())


def _keep_in_image(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    name = info.name
    if name in _DROP_FILES or any(name.startswith(p) for p in _DROP_PREFIXES):
        return None
    return info


def chroot(
    rootfs: Path,
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    check: bool = True,
    user: str | None = None,
    capture: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run a command inside `rootfs` with a clean environment (we are root on build machines)."""
    base = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
    }
    command = [
        "chroot",
        *([f"--userspec={user}"] if user else []),
        str(rootfs),
        "/usr/bin/env",
        "-i",
        *[f"{k}={v}" for k, v in {**base, **(env or {})}.items()],
        *argv,
    ]
    return subprocess.run(command, check=check, text=True, capture_output=capture)


def _distribution_files(root: Path) -> list[Path]:
    """What building a distribution reads (the Dockerfile's COPY lines): its pyproject.toml, README
    and the source directories setuptools is told to search, as tracked (or new) in git."""
    pyproject = root / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())
    find = project.get("tool", {}).get("setuptools", {}).get("packages", {}).get("find", {})
    where = find.get("where", ["."])
    listed = output(
        ["git", "-C", str(root), "ls-files", "--cached", "--others", "--exclude-standard", "--", *where]
    )
    files = {pyproject, *(p for p in (root / "README.md", root / "LICENSE") if p.exists())}
    files.update(root / rel for rel in listed.splitlines() if (root / rel).is_file())
    return sorted(files)


class Venv:
    """Layer 2: /venv with `distributions` installed by pip inside the base (as the Dockerfile does)."""

    def __init__(self, base: PythonBase, distributions: tuple[str, ...]) -> None:
        self.base = base
        self.distributions = distributions
        self.kind = "venv-" + "-".join(Path(d).name or "root" for d in distributions).replace(".", "root")

    def inputs(self, hasher: Hasher) -> None:
        # AGENTTOKEN_IMAGES_SALT forces a rebuild of the venv (bench/image_builds.py times one).
        hasher.text("venv", self.base.key(), os.environ.get("AGENTTOKEN_IMAGES_SALT", ""))
        # The builder itself: a change to how layers are made rebuilds them (the Debian base has
        # its own explicit inputs, as it is the slow one).
        hasher.tree(HERE, sorted(HERE.glob("*.py")))
        for dist in self.distributions:
            root = (REPO / dist).resolve()
            hasher.text(dist).tree(REPO, _distribution_files(root))

    def key(self) -> str:
        hasher = Hasher("venv")
        self.inputs(hasher)
        return hasher.hexdigest()

    def layer(self) -> oci.Layer:
        base_layer_ready = self.base.layer()
        del base_layer_ready
        return _cached_layer(self.kind, self.key(), self._make)

    def _make(self, scratch: Path) -> oci.Layer:
        wheelhouse = fresh_dir(scratch / "wheels")
        names = download_wheels(wheelhouse, self.distributions)
        rootfs = self.base.rootfs()
        for leftover in ("venv", "wheels"):
            shutil.rmtree(rootfs / leftover, ignore_errors=True)
        wheelhouse.replace(rootfs / "wheels")
        log(f"venv: pip install {' '.join(self.distributions)} into {VENV} (inside the base, no network)")
        try:
            chroot(rootfs, [PYTHON, "-m", "venv", VENV])
            pip = [
                f"{VENV}/bin/pip",
                "install",
                "--quiet",
                "--no-index",
                "--find-links=/wheels",
                "--no-compile",
            ]
            chroot(
                rootfs,
                [*pip, *(f"/wheels/{name}" for name in names)],
                env={"PIP_DISABLE_PIP_VERSION_CHECK": "1"},
            )
            # As the Dockerfile: compiled once, hashes not times (see the comment there).
            chroot(
                rootfs,
                [
                    f"{VENV}/bin/python",
                    "-m",
                    "compileall",
                    "-q",
                    "-j0",
                    "--invalidation-mode",
                    "unchecked-hash",
                    VENV,
                ],
            )
        finally:
            shutil.rmtree(rootfs / "wheels", ignore_errors=True)
        built = scratch / "venv"
        (rootfs / "venv").replace(built)
        layer = oci.LayerWriter(self.base.epoch)
        layer.add_tree(built, "venv")
        result = layer.build()  # reads the files: before they are removed
        shutil.rmtree(scratch)
        return result


def download_wheels(wheelhouse: Path, distributions: tuple[str, ...]) -> list[str]:
    """Our distributions as wheels plus every dependency as a wheel for the base's Python.

    Resolved and downloaded on the host (its pip configuration: index, proxy, CA), so the chroot
    never needs network access or the host's certificates; pip inside installs with --no-index.
    Returns the file names of our own wheels (what to install; the rest are their dependencies).
    """
    own = wheelhouse / "own"
    own.mkdir()
    pip = [sys.executable, "-m", "pip"]
    for i, dist in enumerate(distributions):
        # From a copy of exactly the files the cache key hashed (as the Dockerfile's COPY): a
        # checkout's leftover build/ directory would otherwise put stale modules into the wheel.
        root = (REPO / dist).resolve()
        source = wheelhouse / f"src-{i}"
        for path in _distribution_files(root):
            target = source / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", own, source])
        shutil.rmtree(source)
    names = sorted(p.name for p in own.glob("*.whl"))
    for wheel in own.iterdir():
        wheel.replace(wheelhouse / wheel.name)
    own.rmdir()
    arch = platform.machine()
    # Wheels for Debian bookworm's CPython 3.11 (glibc 2.36), whatever Python runs this script.
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)]
    platforms += [f"manylinux2014_{arch}", f"manylinux_2_5_{arch}", f"manylinux1_{arch}", f"linux_{arch}"]
    cache = work_dir() / "wheel-cache"
    cache.mkdir(exist_ok=True)
    run(
        [
            *pip,
            "download",
            "--quiet",
            "--dest",
            cache,
            "--only-binary=:all:",
            "--python-version",
            BASE_PYTHON,
            "--implementation",
            "cp",
            "--abi",
            f"cp{BASE_PYTHON.replace('.', '')}",
            "--abi",
            "abi3",
            "--abi",
            "none",
            *(f"--platform={p}" for p in platforms),
            # our own wheels depend on each other (the operator on agent-token-sdk): from here
            f"--find-links={wheelhouse}",
            *(wheelhouse / name for name in names),
        ]
    )
    for name in names:
        # pip copies the local wheels it resolved into the cache too: they change with the source.
        (cache / name).unlink(missing_ok=True)
    for wheel in cache.glob("*.whl"):
        if not (wheelhouse / wheel.name).exists():
            shutil.copy2(wheel, wheelhouse / wheel.name)
    return names


class PythonImage(Recipe):
    """An image on the Python base with the shared venv; subclasses add their program."""

    distributions: tuple[str, ...] = DISTRIBUTIONS

    def __init__(self, epoch: int) -> None:
        super().__init__(epoch)
        self.base = PythonBase(epoch)
        self.venv = Venv(self.base, self.distributions)

    @property
    def tag(self) -> str:  # type: ignore[override]
        # The content decides the tag: a changed image is a new reference, so `helm upgrade` rolls.
        return f"dev-{self.key()[:12]}"

    def prepare(self) -> None:
        self.base.prepare()

    def inputs(self, hasher: Hasher) -> None:
        self.venv.inputs(hasher)
        hasher.file(DOCKERFILE)

    def key(self) -> str:
        hasher = Hasher(f"{self.name}").text(str(self.epoch))
        self.inputs(hasher)
        return hasher.hexdigest()

    def config(self) -> oci.ImageConfig:
        return runtime_config(DOCKERFILE, BASE_ENV)

    def extra_layers(self) -> list[oci.Layer]:
        return []

    def build(self) -> Built:
        layers = [self.base.layer(), self.venv.layer(), *self.extra_layers()]
        return Built(
            layers, self.config(), {"python_base": self.base.key()[:20], "venv": self.venv.key()[:20]}
        )


class OperatorImage(PythonImage):
    """The operator: exactly the Dockerfile's runtime settings on our base."""

    name = "operator"


class DemoProgramImage(PythonImage):
    """The operator image's settings, but only the SDK and one program of examples/agent-demo/."""

    distributions = SDK_DISTRIBUTIONS
    program: str

    def inputs(self, hasher: Hasher) -> None:
        super().inputs(hasher)
        hasher.file(DEMO_DIR / self.program)

    def config(self) -> oci.ImageConfig:
        config = super().config()
        config.entrypoint = ["python", f"/app/{self.program}"]
        config.cmd = None
        config.exposed_ports = []
        return config

    def extra_layers(self) -> list[oci.Layer]:
        layer = oci.LayerWriter(self.epoch)
        layer.add_dir("app")
        layer.add_file(f"app/{self.program}", (DEMO_DIR / self.program).read_bytes())
        return [layer.build()]


class AgentImage(DemoProgramImage):
    name = "agent"
    program = "agent.py"


class DemoApiImage(DemoProgramImage):
    name = "demo-api"
    program = "demo_api.py"

    def config(self) -> oci.ImageConfig:
        config = super().config()
        config.exposed_ports = ["8080"]
        return config

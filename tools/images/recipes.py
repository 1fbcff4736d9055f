"""What goes into each image. A recipe states its inputs (the cache key) and builds its layers."""

from __future__ import annotations

import fcntl
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from images import oci
from images.build import (
    DEFAULT_EPOCH,
    Catalog,
    Hasher,
    Record,
    Stopwatch,
    debian_version,
    ensure_debian_packages,
    log,
    output,
    run,
    work_dir,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Bump when a recipe changes in a way its listed inputs do not show.
RECIPE_VERSION = "1"
REGISTRY = "localhost/agenttoken"


@dataclass
class Built:
    layers: list[oci.Layer]
    config: oci.ImageConfig
    extra: dict[str, object]


class Recipe(ABC):
    name: str
    tag: str = "1"

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def reference(self) -> str:
        return f"{REGISTRY}/{self.name}:{self.tag}"

    @property
    def archive(self) -> str:
        """The file name in <cache>/images (content-tagged images: one file per tag, so checkouts
        that share the cache do not overwrite each other's archives)."""
        return f"{self.name}.tar" if self.tag == Recipe.tag else f"{self.name}-{self.tag}.tar"

    def prepare(self) -> None:
        """Install what building needs (Debian packages) before the inputs are hashed."""
        return None

    @abstractmethod
    def inputs(self, hasher: Hasher) -> None: ...

    @abstractmethod
    def build(self) -> Built: ...

    def key(self) -> str:
        hasher = Hasher(f"{self.name}/{RECIPE_VERSION}").text(str(self.epoch), oci.host_architecture())
        self.inputs(hasher)
        return hasher.hexdigest()


class Pause(Recipe):
    """The sandbox image containerd is configured with: one static binary."""

    name = "pause"
    source = HERE / "pause.c"

    def prepare(self) -> None:
        ensure_debian_packages(["gcc", "libc6-dev"])

    def inputs(self, hasher: Hasher) -> None:
        hasher.file(self.source).text(debian_version("gcc"), debian_version("libc6-dev"))

    def build(self) -> Built:
        with tempfile.TemporaryDirectory() as tmp:
            binary = Path(tmp) / "pause"
            run(["gcc", "-Os", "-static", "-Wall", "-Wextra", "-Werror", "-o", binary, self.source])
            run(["strip", binary])
            layer = oci.LayerWriter(self.epoch)
            layer.add_file("pause", binary.read_bytes(), mode=0o755)
            built = layer.build()
        return Built([built], oci.ImageConfig(entrypoint=["/pause"], user="65535:65535"), {})


class Busybox(Recipe):
    """A shell and the usual tools for smoke tests (Debian's busybox-static, applets as symlinks)."""

    name = "busybox"
    binary = Path("/bin/busybox")

    def prepare(self) -> None:
        ensure_debian_packages(["busybox-static"])

    def inputs(self, hasher: Hasher) -> None:
        hasher.text(debian_version("busybox-static"))

    def build(self) -> Built:
        layer = oci.LayerWriter(self.epoch)
        for directory in ("bin", "etc", "tmp", "root"):
            layer.add_dir(directory, mode=0o1777 if directory == "tmp" else 0o755)
        layer.add_file("bin/busybox", self.binary.read_bytes(), mode=0o755)
        for applet in output([str(self.binary), "--list"]).split():
            if applet != "busybox":
                layer.add_symlink(f"bin/{applet}", "busybox")
        layer.add_file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\n"
            b"nonroot:x:65532:65532:nonroot:/nonexistent:/bin/false\n"
            b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        )
        layer.add_file("etc/group", b"root:x:0:\nnonroot:x:65532:\nnobody:x:65534:\n")
        return Built([layer.build()], oci.ImageConfig(cmd=["sh"]), {})


# Python distributions installed into /venv, in this order, paths relative to the repository root:
# the operator image gets DISTRIBUTIONS (as the Dockerfile's pip install), the agent and demo API
# images only the SDK. The SDK comes first: the operator depends on agent-token-sdk, which pip must
# take from this checkout, not from an index.
SDK_DISTRIBUTIONS: tuple[str, ...] = ("operator/sdk",)
DISTRIBUTIONS: tuple[str, ...] = (*SDK_DISTRIBUTIONS, ".")

# The Debian side of the Python runtime base: what mmdebstrap installs.
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
MMDEBSTRAP_OPTIONS = (
    "--variant=essential",
    # merged /usr without the usrmerge package (which would pull in perl)
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)
BASE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"]
NONROOT = 65532


def all_recipes(epoch: int) -> list[Recipe]:
    from images.python import AgentImage, DemoApiImage, OperatorImage

    return [Pause(epoch), Busybox(epoch), OperatorImage(epoch), AgentImage(epoch), DemoApiImage(epoch)]


# Content-tagged archives kept per image (several checkouts may share one cache).
KEEP_ARCHIVES = 4


def reference(name: str) -> str:
    """The reference this checkout's sources give image `name` (whether or not it is built)."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    (recipe,) = [r for r in all_recipes(epoch) if r.name == name]
    return recipe.reference


def archive(name: str) -> str:
    """The archive file name of this checkout's image `name` in <cache>/images."""
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    (recipe,) = [r for r in all_recipes(epoch) if r.name == name]
    return recipe.archive


def build_all(names: list[str] | None = None, *, force: bool = False) -> Catalog:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    from images.build import images_dir

    out_dir = images_dir()
    recipes = all_recipes(epoch)
    unknown = set(names or []) - {r.name for r in recipes}
    if unknown:
        raise SystemExit(
            f"unknown image(s): {', '.join(sorted(unknown))}; known: {', '.join(r.name for r in recipes)}"
        )
    work_dir().mkdir(parents=True, exist_ok=True)
    # One build at a time per cache (make test-node and a developer may start one together).
    lock = (work_dir() / "lock").open("w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    catalog = Catalog(out_dir)
    for recipe in recipes:
        if names and recipe.name not in names:
            continue
        recipe.prepare()
        key = recipe.key()
        if not force and catalog.fresh(recipe.name, recipe.reference, key, recipe.archive):
            log(f"{recipe.name}: up to date ({recipe.reference})")
            continue
        log(f"{recipe.name}: building {recipe.reference}")
        watch = Stopwatch()
        built = recipe.build()
        legacy = out_dir / f"{recipe.name}.tar"
        if recipe.archive != legacy.name and legacy.exists():
            legacy.unlink()  # from before archives were named by tag
        info = oci.write_archive(
            out_dir / recipe.archive,
            recipe.reference,
            built.layers,
            built.config,
            epoch=recipe.epoch,
            created_by=f"hack/build-images {recipe.name}",
        )
        catalog.put(
            Record(
                name=recipe.name,
                reference=recipe.reference,
                inputs=key,
                manifest_digest=info.manifest_digest,
                compressed_bytes=info.compressed_size,
                uncompressed_bytes=info.uncompressed_size,
                build_seconds=watch.seconds(),
                extra={**built.extra, "archive": recipe.archive},
            )
        )
        catalog.prune(recipe.name, keep=KEEP_ARCHIVES)
        log(
            f"{recipe.name}: {info.manifest_digest[:19]} {info.compressed_size / 1e6:.1f} MB compressed,"
            f" {info.uncompressed_size / 1e6:.1f} MB unpacked, {watch.seconds():.1f}s"
        )
    return catalog

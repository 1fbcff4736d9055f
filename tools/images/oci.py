"""Write OCI image archives (an oci-layout directory as one tar) from layers we make ourselves.

Reproducible by construction: entries sorted by path, modification times clamped to
SOURCE_DATE_EPOCH, gzip without a timestamp, JSON with sorted keys. The same inputs therefore
give the same layer and manifest digests, which is what lets the node reuse a layer it already
unpacked (the Python base is shared by three images) and what makes the content hash cache honest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import platform
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

MEDIA_INDEX: Final = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
# containerd names an imported image after this annotation of the index entry.
CONTAINERD_NAME: Final = "io.containerd.image.name"
REF_NAME: Final = "org.opencontainers.image.ref.name"

# Go's architecture names, as OCI configs use them.
_ARCH: Final = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
}


def host_architecture() -> str:
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


# A filter sees every entry (path relative to the layer root, no leading "/") and returns the
# entry to keep (possibly changed) or None to drop it.
EntryFilter = Callable[[tarfile.TarInfo], tarfile.TarInfo | None]


@dataclass
class Layer:
    """One filesystem layer: its uncompressed tar (diff_id) and its gzip blob."""

    compressed: bytes
    diff_id: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.compressed)

    @property
    def size(self) -> int:
        return len(self.compressed)


class LayerWriter:
    """Collects entries, then writes them sorted into a deterministic tar."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._entries: dict[str, tuple[tarfile.TarInfo, bytes | Path | None]] = {}

    def _normalise(self, info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.name = info.name.lstrip("/").removeprefix("./").rstrip("/") or "."
        # Older files keep their time (Debian's .pyc files record their source's mtime and would
        # be ignored if it changed); anything made during the build gets the epoch.
        info.mtime = min(int(info.mtime), self.epoch)
        info.uname = info.gname = ""
        info.pax_headers = {}
        return info

    def add(self, info: tarfile.TarInfo, content: bytes | Path | None = None) -> None:
        info = self._normalise(info)
        if info.name == ".":
            return
        self._entries[info.name] = (info, content)

    def add_file(self, name: str, data: bytes, *, mode: int = 0o644, uid: int = 0, gid: int = 0) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.uid, info.gid, info.mtime = len(data), mode, uid, gid, self.epoch
        self.add(info, data)

    def add_dir(self, name: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, mode, uid, gid, self.epoch
        self.add(info)

    def add_symlink(self, name: str, target: str) -> None:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode, info.mtime = tarfile.SYMTYPE, target, 0o777, self.epoch
        self.add(info)

    def add_tree(self, root: Path, prefix: str = "", *, owner: tuple[int, int] | None = (0, 0)) -> None:
        """A directory's content under `prefix`, owned by `owner` (None: as on disk), hard links kept."""
        seen: dict[tuple[int, int], str] = {}
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root).as_posix()
            name = f"{prefix.strip('/')}/{rel}" if prefix.strip("/") else rel
            st = path.lstat()
            info = tarfile.TarInfo(name)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = owner if owner else (st.st_uid, st.st_gid)
            info.mtime = int(st.st_mtime)
            content: Path | None = None
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
            elif stat.S_ISLNK(st.st_mode):
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen:
                    info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                else:
                    seen[key] = name
                    info.size, content = st.st_size, path
            else:
                continue  # sockets, fifos, devices: the runtime provides /dev
            self.add(info, content)
        if prefix.strip("/"):
            uid, gid = owner or (0, 0)
            self.add_dir(prefix.strip("/"), uid=uid, gid=gid)

    def add_tar(self, tar_path: Path, keep: EntryFilter | None = None) -> None:
        """Every entry of an existing tar (e.g. a Debian rootfs), passed through `keep`."""
        with tarfile.open(tar_path) as src:
            for member in src:
                member.name = member.name.lstrip("/").removeprefix("./")
                if member.islnk():
                    member.linkname = member.linkname.lstrip("/").removeprefix("./")
                if member.ischr() or member.isblk() or member.isfifo():
                    continue
                kept = keep(member) if keep else member
                if kept is None:
                    continue
                data: bytes | None = None
                if kept.isreg():
                    extracted = src.extractfile(member)
                    data = extracted.read() if extracted else b""
                self.add(kept, data)

    def names(self) -> set[str]:
        return set(self._entries)

    def discard(self, keep: EntryFilter) -> None:
        """Drop (or change) entries already added."""
        for name, (info, content) in list(self._entries.items()):
            kept = keep(info)
            if kept is None:
                del self._entries[name]
            else:
                self._entries[name] = (kept, content)

    def build(self) -> Layer:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(self._entries):
                info, content = self._entries[name]
                if isinstance(content, Path):
                    with content.open("rb") as fh:
                        tar.addfile(info, fh)
                elif isinstance(content, bytes):
                    info.size = len(content)
                    tar.addfile(info, io.BytesIO(content))
                else:
                    tar.addfile(info)
        data = raw.getvalue()
        # mtime=0: gzip would otherwise stamp the current time into the header.
        return Layer(compressed=gzip.compress(data, compresslevel=6, mtime=0), diff_id=sha256_digest(data))


@dataclass
class ImageConfig:
    """The runtime part of an OCI image config (what `docker inspect` shows under Config)."""

    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    env: list[str] = field(
        default_factory=lambda: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    )
    user: str = ""
    workdir: str = "/"
    exposed_ports: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Env": self.env, "WorkingDir": self.workdir}
        if self.entrypoint is not None:
            out["Entrypoint"] = self.entrypoint
        if self.cmd is not None:
            out["Cmd"] = self.cmd
        if self.user:
            out["User"] = self.user
        if self.exposed_ports:
            out["ExposedPorts"] = {p if "/" in p else f"{p}/tcp": {} for p in self.exposed_ports}
        if self.labels:
            out["Labels"] = self.labels
        return out


@dataclass(frozen=True)
class ArchiveInfo:
    reference: str
    manifest_digest: str
    config_digest: str
    # Sum of the compressed layers: what a registry would transfer.
    compressed_size: int
    # Sum of the uncompressed layers: roughly what the node's snapshotter stores.
    uncompressed_size: int


def write_archive(
    out: Path, reference: str, layers: list[Layer], config: ImageConfig, *, epoch: int, created_by: str
) -> ArchiveInfo:
    """An oci-layout tar with one image, named `reference` for `ctr images import`."""
    created = _rfc3339(epoch)
    image_config = {
        "architecture": host_architecture(),
        "os": "linux",
        "created": created,
        "config": config.to_json(),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": created, "created_by": f"{created_by} (layer {i})"} for i in range(len(layers))
        ],
    }
    manifest_digest, config_digest = _write_layout(out, reference, image_config, layers, epoch)
    return _info(reference, manifest_digest, config_digest, layers)


def _info(reference: str, manifest_digest: str, config_digest: str, layers: list[Layer]) -> ArchiveInfo:
    uncompressed = 0
    for layer in layers:
        with gzip.GzipFile(fileobj=io.BytesIO(layer.compressed)) as gz:
            uncompressed += _drain(gz)
    return ArchiveInfo(
        reference=reference,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        compressed_size=sum(layer.size for layer in layers),
        uncompressed_size=uncompressed,
    )


def _write_layout(
    out: Path, reference: str, image_config: dict[str, Any], layers: list[Layer], epoch: int
) -> tuple[str, str]:
    """Write the oci-layout tar; returns the (manifest, config) digests."""
    blobs: dict[str, bytes] = {}

    def blob(data: bytes) -> dict[str, Any]:
        digest = sha256_digest(data)
        blobs[digest] = data
        return {"digest": digest, "size": len(data)}

    config_ref = {"mediaType": MEDIA_CONFIG, **blob(canonical_json(image_config))}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config_ref,
        "layers": [{"mediaType": MEDIA_LAYER, **blob(layer.compressed)} for layer in layers],
    }
    manifest_ref = blob(canonical_json(manifest))
    tag = reference.rsplit(":", 1)[1] if ":" in reference.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [
            {
                "mediaType": MEDIA_MANIFEST,
                **manifest_ref,
                "platform": {"architecture": image_config["architecture"], "os": image_config["os"]},
                "annotations": {CONTAINERD_NAME: reference, REF_NAME: tag},
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}), epoch)
        _add_bytes(tar, "index.json", canonical_json(index), epoch)
        for digest in sorted(blobs):
            _add_bytes(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), blobs[digest], epoch)
    # Renamed into place last: the node imports every *.tar it finds, never a half-written one.
    partial.replace(out)
    return manifest_ref["digest"], config_ref["digest"]


def relabel(source: Path, out: Path, reference: str, labels: dict[str, str], *, epoch: int) -> ArchiveInfo:
    """The image of archive `source` under `reference` with `labels` added to its config: the same
    layers (nothing new for a node to unpack), a new config and therefore a new manifest digest.
    The node tier upgrades to it when it needs "a changed image" without changing the sources."""
    contents = read_archive(source)
    image_config = json.loads(json.dumps(contents.config))
    runtime = image_config.setdefault("config", {})
    runtime["Labels"] = {**(runtime.get("Labels") or {}), **labels}
    layers = [
        Layer(compressed=layer, diff_id=diff_id)
        for layer, diff_id in zip(contents.layers, image_config["rootfs"]["diff_ids"], strict=True)
    ]
    manifest_digest, config_digest = _write_layout(out, reference, image_config, layers, epoch)
    return _info(reference, manifest_digest, config_digest, layers)


def _drain(stream: gzip.GzipFile) -> int:
    total = 0
    while chunk := stream.read(1 << 20):
        total += len(chunk)
    return total


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes, epoch: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), epoch, 0o644
    tar.addfile(info, io.BytesIO(data))


def _rfc3339(epoch: int) -> str:
    import datetime as _dt

    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ArchiveContents:
    """What an archive holds, read back (tests and `hack/build-images --inspect`)."""

    reference: str
    config: dict[str, Any]
    layers: list[bytes]


def read_archive(path: Path) -> ArchiveContents:
    with tarfile.open(path) as tar:

        def read(name: str) -> bytes:
            member = tar.extractfile(name)
            if member is None:
                raise ValueError(f"{path}: {name} missing")
            return member.read()

        index = json.loads(read("index.json"))
        entry = index["manifests"][0]
        manifest = json.loads(read("blobs/sha256/" + entry["digest"].removeprefix("sha256:")))
        config = json.loads(read("blobs/sha256/" + manifest["config"]["digest"].removeprefix("sha256:")))
        layers = [
            read("blobs/sha256/" + layer["digest"].removeprefix("sha256:")) for layer in manifest["layers"]
        ]
    return ArchiveContents(reference=entry["annotations"][CONTAINERD_NAME], config=config, layers=layers)


def unpack(contents: ArchiveContents, dest: Path) -> None:
    """Apply the layers in order into `dest` (whiteouts are not used by our images)."""
    dest.mkdir(parents=True, exist_ok=True)
    for layer in contents.layers:
        with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
            tar.extractall(dest, filter="tar")  # the filter refuses paths that escape dest


def iter_layer_names(layer: bytes) -> Iterator[str]:
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
        for member in tar:
            yield member.name

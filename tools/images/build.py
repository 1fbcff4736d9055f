"""Build steps shared by the recipes: cache directories, inputs hashing, Debian packages, commands."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Modification times in every layer are clamped to this (2025-01-01T00:00:00Z) unless
# SOURCE_DATE_EPOCH says otherwise: a fixed time makes the digests depend on content only.
DEFAULT_EPOCH = 1735689600


def cache_root() -> Path:
    """The same cache as hack/build-cluster-bins.sh."""
    root = os.environ.get("AGENTTOKEN_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "agent-token-operator"


def images_dir() -> Path:
    """Final archives only (the node imports every *.tar found here) and images.json."""
    return cache_root() / "images"


def work_dir() -> Path:
    """Intermediate results kept between builds (the Debian base, wheels, staging roots)."""
    return cache_root() / "image-build"


def log(message: str) -> None:
    print(f"[build-images] {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(a) for a in argv], check=True, text=True, **kwargs)


def output(argv: Sequence[str]) -> str:
    return run(argv, capture_output=True).stdout


class Hasher:
    """The inputs of one image: the cache key. Everything that can change the result goes in."""

    def __init__(self, kind: str) -> None:
        self._h = hashlib.sha256(kind.encode() + b"\0")

    def text(self, *values: str) -> Hasher:
        for value in values:
            self._h.update(len(value).to_bytes(8, "big") + value.encode())
        return self

    def file(self, path: Path) -> Hasher:
        return self.text(path.name, hashlib.sha256(path.read_bytes()).hexdigest())

    def tree(self, root: Path, files: Iterable[Path]) -> Hasher:
        for path in sorted(files):
            self.text(path.relative_to(root).as_posix(), hashlib.sha256(path.read_bytes()).hexdigest())
        return self

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def debian_version(package: str) -> str:
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status} ${Version}", package], capture_output=True, text=True, check=False
    )
    words = result.stdout.split()
    return words[-1] if result.returncode == 0 and words[:3] == ["install", "ok", "installed"] else ""


def ensure_debian_packages(packages: Iterable[str]) -> None:
    """Install what is missing (CI machines start without them; we run as root there)."""
    missing = [p for p in packages if not debian_version(p)]
    if not missing:
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(
        [*apt, "install", "-y", "--no-install-recommends", *missing], env=env, check=False
    ).returncode:
        run([*apt, "update"], env=env)
        run([*apt, "install", "-y", "--no-install-recommends", *missing], env=env)


@dataclass
class Record:
    """What images.json says about one image."""

    name: str
    reference: str
    inputs: str
    manifest_digest: str
    compressed_bytes: int
    uncompressed_bytes: int
    build_seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Catalog:
    """images.json beside the archives: per image the last build (`images`) and every archive
    present (`archives`, by reference) with its inputs hash, digest and sizes."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "images.json"
        data: dict[str, Any] = json.loads(self.path.read_text()) if self.path.exists() else {}
        if "images" not in data:  # the first layout: one record per name
            data = {"images": data, "archives": {}}
        self.records: dict[str, dict[str, Any]] = data["images"]
        self.archives: dict[str, dict[str, Any]] = data["archives"]

    def fresh(self, name: str, reference: str, inputs: str, archive: str) -> dict[str, Any] | None:
        record = self.archives.get(reference)
        if record and record.get("inputs") == inputs and (self.path.parent / archive).exists():
            self.records[name] = record  # this checkout's build is the current one again
            self._save()
            return record
        return None

    def put(self, record: Record) -> None:
        entry = {
            "reference": record.reference,
            "inputs": record.inputs,
            "manifest_digest": record.manifest_digest,
            "compressed_bytes": record.compressed_bytes,
            "uncompressed_bytes": record.uncompressed_bytes,
            "build_seconds": round(record.build_seconds, 2),
            **record.extra,
        }
        self.records[record.name] = entry
        self.archives[record.reference] = entry
        self._save()

    def prune(self, name: str, keep: int) -> None:
        """Remove all but the `keep` newest archives of a content-tagged image."""
        files = sorted(self.path.parent.glob(f"{name}-*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[keep:]:
            old.unlink()
        present = {p.name for p in self.path.parent.glob("*.tar")}
        self.archives = {
            r: e for r, e in self.archives.items() if e.get("archive", "") in present or "archive" not in e
        }
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(
            json.dumps({"images": self.records, "archives": self.archives}, indent=2, sort_keys=True) + "\n"
        )
        tmp.replace(self.path)


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self.start


def fresh_dir(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path

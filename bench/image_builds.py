"""Image builds: cold (empty cache: mmdebstrap, wheels from PyPI), warm (nothing changed) and after
an edit of the operator's source (the venv and the three Python images again), plus image sizes.

    python bench/image_builds.py            # writes bench/results/images.json

The cold build uses a fresh cache directory of its own (AGENTTOKEN_CACHE), so the real cache is
neither used nor disturbed; the edit is simulated by a changed input hash (no file is touched).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchsupport import REPO_ROOT, header, write

BUILD = [sys.executable, str(REPO_ROOT / "hack" / "build-images")]


def timed_build(cache: Path, *args: str, env: dict[str, str] | None = None) -> float:
    started = time.monotonic()
    subprocess.run(
        [*BUILD, *args], env={**os.environ, **(env or {}), "AGENTTOKEN_CACHE": str(cache)}, check=True
    )
    return round(time.monotonic() - started, 1)


def main() -> None:
    results: dict[str, Any] = header("images")
    with tempfile.TemporaryDirectory(prefix="images-bench-") as tmp:
        cache = Path(tmp)
        results["cold_seconds"] = timed_build(cache)
        catalog = json.loads((cache / "images" / "images.json").read_text())["images"]
        results["cold_seconds_by_image"] = {name: r["build_seconds"] for name, r in catalog.items()}
        results["warm_noop_seconds"] = timed_build(cache)
        # A source edit changes the venv's inputs: the venv layer and the three Python images are
        # rebuilt, the Debian base and the wheel cache are reused. AGENTTOKEN_IMAGES_SALT stands
        # in for the edit (it is hashed into the venv's inputs).
        results["after_source_edit_seconds"] = timed_build(
            cache, env={"AGENTTOKEN_IMAGES_SALT": str(time.time())}
        )
        catalog = json.loads((cache / "images" / "images.json").read_text())["images"]
    results["images"] = {
        name: {
            "reference": r["reference"],
            "compressed_mb": round(r["compressed_bytes"] / 1e6, 1),
            "unpacked_mb": round(r["uncompressed_bytes"] / 1e6, 1),
        }
        for name, r in sorted(catalog.items())
    }
    results["note"] = (
        "operator, agent and demo-api share the Debian python base layer (106 MB unpacked) and agent"
        " and demo-api also the SDK venv (same digests: a node stores them once); 'cold' starts from"
        " an empty project cache (mmdebstrap, wheels; pip's own download cache may be warm)"
    )
    write("images", results)


if __name__ == "__main__":
    main()

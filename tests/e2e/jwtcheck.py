"""An independent Go verifier (go-jose) for access tokens: hack/jwtcheck, built into the cache.

Keyed by a hash of its sources, like the other Go binaries under ~/.cache/agent-token-operator/bins,
so a fresh clone builds it once (needs `go`, which the cluster binaries need anyway).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "hack" / "jwtcheck"


def cache_root() -> Path:
    base = os.environ.get("AGENTTOKEN_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "agent-token-operator"
    )
    return Path(base) / "bins"


def binary() -> Path:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    target = cache_root() / f"jwtcheck-{digest.hexdigest()[:12]}" / "jwtcheck"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
        subprocess.run(
            ["go", "build", "-o", str(target.with_suffix(".tmp")), "."],
            cwd=SOURCE, env=env, check=True, timeout=900,
        )  # fmt: skip
        target.with_suffix(".tmp").rename(target)
    return target


class GoVerifier:
    """One long-running jwtcheck process: a resource server with its own JWKS cache."""

    def __init__(self, *, jwks_url: str, issuer: str, audience: str, cache_seconds: float) -> None:
        self.proc = subprocess.Popen(
            [str(binary()), "-jwks-url", jwks_url, "-issuer", issuer, "-audience", audience,
             "-cache", f"{cache_seconds}s", "-min-refresh", "1s"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def check(self, token: str) -> str:
        """ "ok <kid>" or "reject <reason>" (the answer never contains the token)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(token + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.kill()
        self.proc.communicate()  # reaps it and closes both pipes

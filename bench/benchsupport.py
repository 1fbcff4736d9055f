"""Shared by the benchmarks: the operator as a process, started and waited for."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from agenttoken.devcluster import free_ports


def start_operator(env: dict[str, str], log_path: Path, timeout: float = 60) -> subprocess.Popen[bytes]:
    """`python -m agenttoken run` on free ports; returns once its liveness endpoint answers."""
    http_port, live_port = free_ports(2)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agenttoken", "run", "--http-port", str(http_port),
             "--liveness", f"http://127.0.0.1:{live_port}/healthz"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{live_port}/healthz", timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the operator did not come up; log {log_path}") from None
            time.sleep(0.2)

"""The operator as a real process (`python -m agenttoken run`), so tests can kill -9 it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from agenttoken.core import revocation
from agenttoken_sdk.jose import REVOCATION_LIST_TYPE
from devcluster import free_ports

from .kube import Kube, wait_for

CRASHPOINT_BOOT = (
    "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


@dataclass
class OperatorProcess:
    kube: Kube
    log_path: Path
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)
    # The identity the operator runs as (default: the test's admin kubeconfig).
    kubeconfig: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    # Stable across restarts of this object (like a StatefulSet pod's name): a restarted operator
    # takes its own Lease back at once, so kill -9 tests measure the operator, not a 15 s Lease
    # expiry. Two OperatorProcess objects are two candidates.
    identity: str = field(default_factory=lambda: f"test-operator-{uuid.uuid4().hex[:8]}")
    ports: list[int] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics"

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.ports[1]}/healthz"

    def start(self, timeout: float = 60) -> None:
        self.ports = free_ports(2)
        log = self.log_path.open("ab")
        # A crash point is injected by a test-only entry script, never by the operator itself.
        # Run through runpy: as a plain script its folder would lead sys.path, and this
        # module's name (operator) would shadow the standard library's.
        entry = (
            ["-c", CRASHPOINT_BOOT, str(Path(__file__).with_name("crashpoint.py"))]
            if "AGENTTOKEN_TEST_CRASH" in self.extra_env
            else ["-m", "agenttoken"]
        )
        self.proc = subprocess.Popen(
            [
                sys.executable, *entry, "run",
                "--http-port", str(self.ports[0]),
                "--liveness", self.liveness_url,
                "--identity", self.identity,
                *self.extra_args,
            ],
            env={
                **self.kube.env,
                **({"KUBECONFIG": str(self.kubeconfig)} if self.kubeconfig else {}),
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        wait_for("the operator's liveness endpoint", self.alive, timeout=timeout)

    def crashing_twin(self, point: str, marker: Path) -> OperatorProcess:
        """This operator (same identity and log) set to die like kill -9 at crash point `point`
        (tests/e2e/crashpoint.py), once: `marker` records that it did."""
        return OperatorProcess(
            self.kube,
            self.log_path,
            extra_env={"AGENTTOKEN_TEST_CRASH": f"{point}:{marker}"},
            kubeconfig=self.kubeconfig,
            identity=self.identity,  # the restarted operator takes the crashed one's Lease at once
        )

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}; log {self.log_path}")
        with contextlib.suppress(OSError), urllib.request.urlopen(self.liveness_url, timeout=2) as resp:
            return bool(resp.status == 200)
        return False

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as resp:
            return str(resp.read().decode())

    def reconciled(self) -> int:
        """Successful reconciles since this process started (from its own /metrics)."""
        for line in self.metrics().splitlines():
            if line.startswith('agenttoken_reconcile_duration_seconds_count{result="success"}'):
                return int(float(line.split()[-1]))
        return 0

    def wait_reconciled(self, kube: Kube, timeout: float = 30) -> None:
        """Wait until the (re)started operator has reconciled every AgentToken at least once."""

        def done() -> bool:
            items = (kube.get_json("agenttokens", "-A") or {}).get("items", [])
            return self.reconciled() >= len(items)

        wait_for("a reconcile of every AgentToken after start", done, timeout=timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def revoked_ids(operator: OperatorProcess) -> set[str]:
    """The ids on the signed list the operator serves (parts read back, signatures not checked
    here: the verifier tests do that)."""
    with urllib.request.urlopen(f"{operator.base_url}/revocations.json", timeout=5) as r:
        parts = [revocation.read_part(signed) for signed in json.loads(r.read())["lists"]]
    return {jti for part in parts if part is not None for jti in part.revoked}


def is_revocation_list(compact: str) -> bool:
    """Whether a JWS-shaped string is a part of the signed revocation list, by its protected
    header's `typ` alone (not its payload or signature: a test may leave a tampered part behind):
    a public document in ConfigMaps, typed never to pass as a token, so the one JWS a leak scan
    may find outside Secrets."""
    header = compact.split(".", 1)[0]
    try:
        typ = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))).get("typ")
    except (ValueError, AttributeError):  # not base64 / not JSON / not an object
        return False
    return bool(typ == REVOCATION_LIST_TYPE)

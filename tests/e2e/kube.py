"""Test-side helpers for talking to a real cluster: kubectl, apply, and polling with a deadline."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from devcluster import kubectl_path

T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Kube:
    """A cluster reached through one kubeconfig."""

    kubeconfig: Path
    name: str = "local"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [kubectl_path(), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    def apply(self, manifest: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.kubectl("apply", "-f", "-", *args, input=manifest, check=check)

    def get_json(self, *args: str) -> dict[str, Any] | None:
        proc = self.kubectl("get", *args, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(f"kubectl get {' '.join(args)}: {proc.stderr.strip()}")
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def wait_event(
        self, namespace: str, name: str, reason: str, *, warning: bool | None = None, timeout: float = 15
    ) -> dict[str, Any]:
        """An Event about `name` with `reason` (and type). The operator posts Events in the
        background, up to a second after what they report (alike ones are aggregated)."""

        def found() -> dict[str, Any] | None:
            listing = self.get_json(
                "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
            )
            return next(
                (
                    e
                    for e in (listing or {}).get("items", [])
                    if e["reason"] == reason and (warning is None or (e["type"] == "Warning") == warning)
                ),
                None,
            )

        return wait_for(f"a {reason} Event about {name}", found, timeout=timeout)

    def wait_default_sa(self, namespace: str, timeout: float = 30) -> None:
        """Pods are admitted only once the controller-manager created the namespace's default SA."""
        wait_for(
            f"default ServiceAccount in {namespace}",
            lambda: self.get_json("serviceaccount", "default", "-n", namespace),
            timeout=timeout,
        )

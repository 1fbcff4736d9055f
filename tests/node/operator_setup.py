"""What the operator tests on the real node share: images, Helm, and reading pods and containers."""

from __future__ import annotations

import base64
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import images.recipes
from devcluster.node import NODE_LABEL
from images.build import images_dir
from tests.e2e.conftest import REPO, helm_path
from tests.e2e.kube import Kube, wait_for

CHART = REPO / "charts" / "agent-token-operator"
RELEASE = "agent-token-operator"
OPERATOR_NS = "agenttoken-system"
# fullname of the release (it contains the chart name, so the chart uses it as is).
FULLNAME = RELEASE
ISSUER = f"https://{FULLNAME}.{OPERATOR_NS}.svc/issuers/builtin"
SELECTOR = f"app.kubernetes.io/name=agent-token-operator,app.kubernetes.io/instance={RELEASE}"
RESULTS = REPO / "bench" / "results" / "operator-pod.json"


def image_reference(name: str) -> str:
    """The reference hack/build-images gives this checkout's image (the Python images are tagged by
    the hash of their sources, so another checkout sharing the cache cannot swap it)."""
    archive = images_dir() / images.recipes.archive(name)
    assert archive.exists(), f"{archive} missing: run hack/build-images (make test-node does)"
    return images.recipes.reference(name)


def image_record(name: str) -> dict[str, Any]:
    catalog = json.loads((images_dir() / "images.json").read_text())
    record: dict[str, Any] = catalog["archives"][image_reference(name)]
    return record


def helm(
    kube: Kube, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [helm_path(), *args], env=kube.env, capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args[:2])} failed: {proc.stderr.strip()}")
    return proc


def install_values() -> list[str]:
    """The values the local install uses (docs/install.md shows the same)."""
    repository, tag = image_reference("operator").rsplit(":", 1)
    return [
        "--set",
        f"image.repository={repository}",
        "--set",
        f"image.tag={tag}",
        "--set",
        "image.pullPolicy=Never",
    ]


def operator_pods(kube: Kube) -> list[dict[str, Any]]:
    pods = kube.get_json("pods", "-n", OPERATOR_NS, "-l", SELECTOR)
    return [p for p in (pods or {}).get("items", []) if not p["metadata"].get("deletionTimestamp")]


def ready_operator_pod(kube: Kube, timeout: float = 180) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        for pod in operator_pods(kube):
            if is_ready(pod):
                return pod
        return None

    return wait_for("a Ready operator pod", probe, timeout=timeout, interval=0.5)


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
    return conditions.get("Ready") == "True" and not pod["metadata"].get("deletionTimestamp")


def container_ids(pods: list[dict[str, Any]]) -> set[str]:
    return {
        s["containerID"]
        for p in pods
        for s in p["status"].get("containerStatuses", [])
        if s.get("containerID")
    }


def proc_status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def root_mount_options(pid: int) -> list[str]:
    """Mount options of "/" as the container's process sees it."""
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no root mount in /proc/{pid}/mountinfo")


def mount_points(pid: int) -> set[str]:
    return {line.split()[4] for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()}


def cgroup_memory_bytes(pid: int) -> int | None:
    """The container's memory use as its cgroup counts it (v1 or v2)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            file = Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.current"
        elif "memory" in controllers.split(","):
            file = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.usage_in_bytes"
        else:
            continue
        if file.exists():
            return int(file.read_text())
    return None


def secret_bundle(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    """The token bundle's metadata (tokenId, issuedAt, ...); the token itself is dropped here."""
    secret = kube.get_json("secret", name, "-n", ns)
    if not secret or "token.json" not in secret.get("data", {}):
        return None
    bundle: dict[str, Any] = json.loads(base64.b64decode(secret["data"]["token.json"]))
    bundle.pop("token", None)
    return bundle


# Fetches each URL and prints the body and a separator line (Python: Debian's busybox-static wget
# crashes with SIGSEGV on this machine, on the host as in a pod).
_FETCH = """
import sys, urllib.request
for url in sys.argv[1:]:
    with urllib.request.urlopen(url, timeout=10) as response:
        sys.stdout.write(response.read().decode() + "\\n---END---\\n")
"""


def pod_fetch(kube: Kube, ns: str, name: str, urls: list[str], timeout: float = 90) -> list[str]:
    """Fetch URLs from inside a pod on the pod network (the agent image's Python); returns each body."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeSelector": {NODE_LABEL: "true"},
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "fetch",
                    "image": image_reference("agent"),
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", _FETCH, *urls],
                }
            ],
        },
    }
    kube.apply(json.dumps(manifest))

    def finished() -> str | None:
        phase = ((kube.get_json("pod", name, "-n", ns) or {}).get("status") or {}).get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    phase = wait_for(f"pod {name} to finish", finished, timeout=timeout, interval=0.5)
    logs = kube.kubectl("logs", "-n", ns, name).stdout
    assert phase == "Succeeded", f"fetching {urls} from a pod failed: {logs[-2000:]}"
    return [part.strip() for part in logs.split("---END---")][: len(urls)]


def json_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@dataclass
class Clock:
    """Wall time (to compare with times the operator writes) and a monotonic start."""

    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start


def write_results(section: str, figures: dict[str, Any]) -> None:
    """Merge one section into bench/results/operator-pod.json (the node tier's own figures)."""
    data: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[section] = {
        **figures,
        "load_average": load_average(),
        "machine": {"cpus": os.cpu_count(), "arch": platform.machine()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

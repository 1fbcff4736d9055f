"""What the operator tests on the real node share: images, Helm, and reading pods and containers."""

from __future__ import annotations

import base64
import json
import os
import platform
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import images.recipes
from devcluster import kubectl_path
from devcluster.node import NODE_LABEL
from images import oci
from images.build import DEFAULT_EPOCH, images_dir
from tests.e2e.conftest import REPO, helm_path
from tests.e2e.kube import Kube, wait_for

from .conftest import NodeCluster

CHART = REPO / "charts" / "agent-token-operator"
RELEASE = "agent-token-operator"
OPERATOR_NS = "agenttoken-system"
# fullname of the release (it contains the chart name, so the chart uses it as is).
FULLNAME = RELEASE
ISSUER = f"https://{FULLNAME}.{OPERATOR_NS}.svc/issuers/builtin"
SELECTOR = f"app.kubernetes.io/name=agent-token-operator,app.kubernetes.io/instance={RELEASE}"
RESULTS = REPO / "bench" / "results" / "operator-pod.json"
# The Lease of shard 0 (docs/install.md): its holder is the leader, named by its pod (POD_NAME).
LEASE = "agenttoken-shard-0"
# Where a relabelled copy of the operator image is imported (outside localhost/agenttoken/, whose
# images import_images() drops when no archive in the cache names them).
UPGRADE_REPOSITORY = "localhost/agenttoken-test/operator"
# What the demo agents ask for and the demo API requires.
AUDIENCE = "https://demo-api.example"
SCOPE = "demo:call"


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


# ------------------------------------------------------------------------------ the release


@dataclass
class Release:
    values: list[str]
    installed_in: float
    service_ip: str
    crds_from_chart: bool


def _unowned(kube: Kube, *resource: str) -> bool:
    obj = kube.get_json(*resource)
    return (
        obj is not None and obj["metadata"].get("annotations", {}).get("meta.helm.sh/release-name") != RELEASE
    )


@contextmanager
def installed_release(kube: Kube, node_cluster: NodeCluster) -> Iterator[Release]:
    """`helm install` of the chart with its defaults (two replicas electing a leader) and the image
    built here; uninstalled afterwards."""
    assert node_cluster.cluster.node is not None
    # make test-node builds the images before the node starts; a rebuild since is imported here.
    node_cluster.cluster.node.import_images()
    values = install_values()
    # Another test of the session may have applied the CRDs or the builtin issuer without Helm;
    # Helm refuses to adopt them, so the release then leaves them alone.
    crds_from_chart = not _unowned(kube, "crd", "agenttokens.agenttoken.dev")  # absent or ours
    if not crds_from_chart:
        values += ["--set", "crds.enabled=false"]
    if not crds_from_chart and _unowned(kube, "clustertokenissuer", "builtin"):
        values += ["--set", "builtinIssuer.enabled=false"]
    started = time.monotonic()
    helm(
        kube, "install", RELEASE, str(CHART), "-n", OPERATOR_NS, "--create-namespace",
        *values, "--wait", "--timeout", "240s", timeout=300,
    )  # fmt: skip
    ready_operator_pod(kube)
    installed_in = time.monotonic() - started
    service = kube.get_json("service", FULLNAME, "-n", OPERATOR_NS)
    assert service is not None
    try:
        yield Release(values, installed_in, service["spec"]["clusterIP"], crds_from_chart)
    finally:
        helm(kube, "uninstall", RELEASE, "-n", OPERATOR_NS, "--wait", check=False)


# ------------------------------------------------------------------------------ leadership


def lease_holder(kube: Kube) -> str:
    lease = kube.get_json("lease", LEASE, "-n", OPERATOR_NS)
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def leader_pod(kube: Kube, timeout: float = 90) -> dict[str, Any]:
    """The Ready operator pod holding shard 0's Lease (the chart makes the pod name the identity)."""

    def probe() -> dict[str, Any] | None:
        holder = lease_holder(kube)
        return next((p for p in operator_pods(kube) if p["metadata"]["name"] == holder and is_ready(p)), None)

    return wait_for("the leader (holder of the Lease) among the Ready operator pods", probe, timeout=timeout)


@dataclass
class LeaseChange:
    at: float  # wall time the watch delivered it
    holder: str
    transitions: int


@dataclass
class LeaseWatch:
    """Every change of shard 0's Lease holder, with the wall time a watch (one `kubectl get -w`
    process, not polling) delivered it: how long a failover took, seen from outside."""

    kube: Kube
    changes: list[LeaseChange] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _proc: subprocess.Popen[str] | None = None
    _thread: threading.Thread | None = None

    def __enter__(self) -> LeaseWatch:
        self._thread = threading.Thread(target=self._run, name="lease-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        decoder = json.JSONDecoder()
        while not self._stop.is_set():
            argv = [kubectl_path(), "get", "lease", LEASE, "-n", OPERATOR_NS, "--watch", "-o", "json"]
            with subprocess.Popen(
                argv, env=self.kube.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            ) as self._proc:
                assert self._proc.stdout is not None
                buffer = ""
                for line in self._proc.stdout:
                    buffer += line
                    try:
                        lease, end = decoder.raw_decode(buffer.lstrip())
                    except json.JSONDecodeError:
                        continue  # the object is not complete yet
                    buffer = buffer.lstrip()[end:]
                    self._record(lease)
            self._stop.wait(0.5)  # the watch ended (server timeout, Lease not created yet): again

    def _record(self, lease: dict[str, Any]) -> None:
        spec = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        if not self.changes or self.changes[-1].holder != holder:
            self.changes.append(LeaseChange(time.time(), holder, int(spec.get("leaseTransitions") or 0)))

    def taken_over(self, after: float, old: str, timeout: float = 90) -> LeaseChange:
        """The first change after wall time `after` to a holder other than `old` (and not empty)."""

        def probe() -> LeaseChange | None:
            return next((c for c in self.changes if c.at >= after and c.holder not in ("", old)), None)

        return wait_for(f"another holder than {old} for {LEASE}", probe, timeout=timeout, interval=0.2)


# ------------------------------------------------------------------------------ a changed image


def relabelled_operator_image(node_cluster: NodeCluster, label: str) -> str:
    """The operator image with one more label (same layers, another manifest digest), imported
    into the node: `helm upgrade` to it replaces every pod as a new release would."""
    assert node_cluster.cluster.node is not None
    source = images_dir() / images.recipes.archive("operator")
    tag = image_reference("operator").rsplit(":", 1)[1] + f"-{label}"
    reference = f"{UPGRADE_REPOSITORY}:{tag}"
    out = node_cluster.cluster.workdir / f"operator-{tag}.tar"
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_EPOCH))
    oci.relabel(source, out, reference, {"dev.agenttoken.test/upgrade": label}, epoch=epoch)
    result = node_cluster.cluster.node.ctr("images", "import", str(out), timeout=300)
    assert result.returncode == 0, f"importing {out.name}: {result.stderr.strip()}"
    return reference


# ------------------------------------------------------------------------------ agents and the demo API


def app_pods(kube: Kube, ns: str, app: str) -> list[dict[str, Any]]:
    pods = kube.get_json("pods", "-n", ns, "-l", f"app={app}")
    return list((pods or {}).get("items", []))


def agent_deployment(
    name: str,
    ns: str,
    replicas: int,
    env: dict[str, str],
    *,
    three_ways: bool,
    secret: str = "agent-token",  # noqa: S107 (a name)
) -> dict[str, Any]:
    """The demo agent (examples/agent-demo/agent.py) reading `secret` as a volume through the SDK,
    and with `three_ways` also as an env var and a subPath file (those need a restart per token)."""
    mounts = [{"name": "token", "mountPath": "/var/run/agent-token", "readOnly": True}]
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    if three_ways:
        mounts.append(
            {"name": "token", "mountPath": "/etc/agent/token", "subPath": "token", "readOnly": True}
        )
        env_list.append(
            {
                "name": "AGENT_API_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}},
            }
        )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": replicas,
            # Every ReplicaSet kept: the node tier counts rollouts by them (default keeps 10).
            "revisionHistoryLimit": 100,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "nodeSelector": {NODE_LABEL: "true"},
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [
                        {
                            "name": "agent",
                            "image": image_reference("agent"),
                            "imagePullPolicy": "Never",
                            "env": env_list,
                            "volumeMounts": mounts,
                            "securityContext": {
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                    "volumes": [{"name": "token", "secret": {"secretName": secret}}],
                },
            },
        },
    }


def demo_api(ns: str, operator_ip: str, extra_env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The demo API (examples/agent-demo/demo_api.py) verifying with the SDK against the operator's
    Service, as a Deployment and a Service named demo-api."""
    base = f"http://{operator_ip}:8080/issuers/builtin"
    env = {
        "ISSUER": ISSUER,
        "AUDIENCE": AUDIENCE,
        "REQUIRED_SCOPES": SCOPE,
        "JWKS_URL": f"{base}/jwks.json",
        "REVOCATIONS_URL": f"{base}/revocations.json",
        "FETCH_TIMEOUT": "1",
        **(extra_env or {}),
    }
    labels = {"app": "demo-api"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo-api", "namespace": ns},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "nodeSelector": {NODE_LABEL: "true"},
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True},
                    "containers": [
                        {
                            "name": "api",
                            "image": image_reference("demo-api"),
                            "imagePullPolicy": "Never",
                            "env": [{"name": k, "value": v} for k, v in env.items()],
                            "ports": [{"containerPort": 8080, "name": "http"}],
                            "readinessProbe": {
                                "httpGet": {"path": "/healthz", "port": "http"},
                                "periodSeconds": 2,
                            },
                            "securityContext": {
                                "readOnlyRootFilesystem": True,
                                "allowPrivilegeEscalation": False,
                            },
                        }
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "demo-api", "namespace": ns},
        "spec": {"selector": labels, "ports": [{"port": 8080, "targetPort": "http"}]},
    }
    return [deployment, service]

"""The real node's figures: start, pod start, Secret propagation into containers, memory.

    .venv/bin/python bench/node.py [--pods 6] [--rounds-default 2] [--rounds-short 3] [--short 5s]

Starts a local cluster with a real node (containerd, kubelet, kube-proxy) once with kubelet's
upstream syncFrequency (1m0s) and once with a short one, and in each:
- the warm start (every binary and image cached) and its parts: control plane, containerd and
  image import (in parallel with the control plane), kubelet start -> node Ready;
- pod create -> Ready for `--pods` pods created at once, each mounting its own Secret;
- Secret update -> new content visible inside the container: all Secrets patched together per
  round, each file read every 20 ms through /proc/<container pid>/root (the container's own mount
  namespace), so one round gives `--pods` independent samples (each pod has its own sync phase);
- RSS of kubelet, containerd, kube-proxy and the shims with those pods running;
- teardown time (pods removed by kubelet, host restored).
Then `--extra-starts` more start/stop cycles for the warm start. Writes bench/results/node.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchsupport import header, rss_mb, summary, write
from devcluster import LocalCluster
from devcluster.node import NODE_LABEL

NS = "bench"
BUSYBOX = "localhost/agenttoken/busybox:1"
# One real node per host: wait for another run's node instead of failing.
LOCK_WAIT = 1800.0


def _manifests(pods: int) -> str:
    items: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}]
    for i in range(pods):
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"s{i}", "namespace": NS},
                "stringData": {"value": "v0"},
            }
        )
        items.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"reader{i}", "namespace": NS},
                "spec": {
                    "nodeSelector": {NODE_LABEL: "true"},
                    "terminationGracePeriodSeconds": 1,
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "main",
                            "image": BUSYBOX,
                            "imagePullPolicy": "Never",
                            "command": ["sh", "-c", "while true; do sleep 1; done"],
                            "volumeMounts": [{"name": "s", "mountPath": "/etc/s", "readOnly": True}],
                        }
                    ],
                    "volumes": [{"name": "s", "secret": {"secretName": f"s{i}"}}],
                },
            }
        )
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _kubectl(cluster: LocalCluster, *args: str, stdin: str | None = None) -> str:
    from devcluster import kubectl_path

    return subprocess.run(
        [kubectl_path(), *args], input=stdin, env=cluster.env(), capture_output=True, text=True, check=True
    ).stdout


def _ready_pods(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    pods = json.loads(_kubectl(cluster, "get", "pods", "-n", NS, "-o", "json"))["items"]
    ready = {}
    for pod in pods:
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions", [])}
        if conditions.get("Ready") == "True":
            ready[pod["metadata"]["name"]] = pod
    return ready


def _start_pods(cluster: LocalCluster, count: int) -> tuple[list[float], dict[str, Path]]:
    """Create the pods at once; per pod the seconds until Ready, and its Secret file's host path."""
    t0 = time.monotonic()
    _kubectl(cluster, "apply", "-f", "-", stdin=_manifests(count))
    ready_at: dict[str, float] = {}
    pods: dict[str, dict[str, Any]] = {}
    while len(ready_at) < count:
        if time.monotonic() - t0 > 300:
            raise SystemExit(f"pods not Ready within 300 s: {sorted(ready_at)}")
        for name, pod in _ready_pods(cluster).items():
            ready_at.setdefault(name, time.monotonic() - t0)
            pods[name] = pod
        time.sleep(0.1)
    assert cluster.node is not None
    tasks = {}
    for line in cluster.node.ctr("tasks", "list").stdout.splitlines()[1:]:
        fields = line.split()
        tasks[fields[0]] = int(fields[1])
    files = {}
    for name, pod in pods.items():
        cid = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
        files[name] = Path(f"/proc/{tasks[cid]}/root/etc/s/value")
    return sorted(ready_at.values()), files


def _propagation(cluster: LocalCluster, files: dict[str, Path], rounds: int, timeout: float) -> list[float]:
    samples: list[float] = []
    for r in range(1, rounds + 1):
        value = f"v{r}"
        sent: dict[str, float] = {}
        for i in range(len(files)):
            sent[f"reader{i}"] = time.monotonic()
            status, body = cluster.api(
                "PATCH",
                f"/api/v1/namespaces/{NS}/secrets/s{i}",
                {"stringData": {"value": value}},
                content_type="application/merge-patch+json",
            )
            assert status == 200, body
        pending = dict(files)
        while pending:
            for name, path in list(pending.items()):
                if path.read_text() == value:
                    samples.append(round(time.monotonic() - sent[name], 3))
                    del pending[name]
            if pending and time.monotonic() - min(sent.values()) > timeout:
                raise SystemExit(f"round {r}: no update within {timeout:.0f}s for {sorted(pending)}")
            time.sleep(0.02)
        print(f"round {r}: {samples[-len(files) :]}", flush=True)
    return samples


def _rss(cluster: LocalCluster) -> dict[str, float]:
    assert cluster.node is not None
    node = cluster.node
    result = {name: round(rss_mb(pid), 1) for name, pid in node.running_pids().items() if name != "lock"}
    shims = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(Path(entry / "exe").readlink()) == str(node.bins.shim):
                    shims.append(rss_mb(int(entry.name)))
            except OSError:
                continue
    result["shims_total"] = round(sum(shims), 1)
    result["shim_count"] = len(shims)
    return result


def _sync_seconds(text: str) -> float:
    return 60.0 if text == "1m0s" else float(text.rstrip("s"))


def run_one(sync: str, pods: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        cluster = LocalCluster(Path(tmp), real_node=True, sync_frequency=sync, node_lock_wait=LOCK_WAIT)
        cluster.start()
        try:
            timings = {k: round(v, 2) for k, v in cluster.timings.items()}
            print(f"syncFrequency {sync}: started {timings}", flush=True)
            ready, files = _start_pods(cluster, pods)
            samples = _propagation(cluster, files, rounds, timeout=_sync_seconds(sync) * 1.5 + 60)
            rss = _rss(cluster)
        finally:
            t0 = time.monotonic()
            cluster.stop()
            teardown = round(time.monotonic() - t0, 2)
    return {
        "sync_frequency": sync,
        "start": timings,
        "pod_create_to_ready_s": ready,
        "secret_update_to_file_s": {"samples": samples, **summary(samples)},
        "rss_mb": rss,
        "teardown_s": teardown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--pods", type=int, default=6)
    parser.add_argument("--rounds-default", type=int, default=2)
    parser.add_argument("--rounds-short", type=int, default=3)
    parser.add_argument("--short", default="5s")
    parser.add_argument("--extra-starts", type=int, default=2)
    args = parser.parse_args()
    results = header("node", **vars(args))
    runs = [
        run_one("1m0s", args.pods, args.rounds_default),
        run_one(args.short, args.pods, args.rounds_short),
    ]
    starts = [r["start"] for r in runs]
    for _ in range(args.extra_starts):
        with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
            cluster = LocalCluster(Path(tmp), real_node=True, node_lock_wait=LOCK_WAIT)
            cluster.start()
            starts.append({k: round(v, 2) for k, v in cluster.timings.items()})
            cluster.stop()
    results["warm_start_s"] = summary([s["total"] for s in starts])
    results["node_ready_after_kubelet_start_s"] = summary([s["node_node_ready"] for s in starts])
    results["starts"] = starts
    results["pod_create_to_ready_s"] = summary([x for r in runs for x in r["pod_create_to_ready_s"]])
    results["secret_update_to_file_s"] = {r["sync_frequency"]: r["secret_update_to_file_s"] for r in runs}
    results["rss_mb"] = {r["sync_frequency"]: r["rss_mb"] for r in runs}
    results["teardown_s"] = [r["teardown_s"] for r in runs]
    write("node", results)


if __name__ == "__main__":
    main()

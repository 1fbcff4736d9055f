"""Lifecycle benchmark: apply -> Secret-ready latency (1 and N at once) and operator RSS at scale.

Runs its own local control plane and operator process; writes JSON to bench/results/.

    .venv/bin/python bench/lifecycle.py [--burst 100] [--scale 1000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes

from agenttoken.devcluster import REPO_ROOT, LocalCluster, install
from benchsupport import start_operator

NS = "bench"
SELECTOR = "app.kubernetes.io%2Fmanaged-by%3Dagent-token-operator"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(latencies: list[float]) -> dict[str, float]:
    return {
        "count": len(latencies),
        "p50_s": round(percentile(latencies, 50), 4),
        "p95_s": round(percentile(latencies, 95), 4),
        "p99_s": round(percentile(latencies, 99), 4),
        "max_s": round(max(latencies), 4),
        "mean_s": round(statistics.fmean(latencies), 4),
    }


class SecretWatcher:
    """Records when each managed Secret first appears: a raw watch stream on the apiserver
    (resumed from the last resourceVersion if it drops), not polling."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        _, raw = cluster.api("GET", f"/api/v1/namespaces/{NS}/secrets?labelSelector={SELECTOR}")
        self.rv = json.loads(raw)["metadata"]["resourceVersion"]
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.cluster.ports["apiserver"], context=self.cluster._ssl_context(), timeout=60
            )
            try:
                conn.request(
                    "GET",
                    f"/api/v1/namespaces/{NS}/secrets?watch=1&labelSelector={SELECTOR}"
                    f"&resourceVersion={self.rv}&allowWatchBookmarks=true&timeoutSeconds=50",
                )
                resp = conn.getresponse()
                for line in resp:
                    event = json.loads(line)
                    obj = event["object"]
                    self.rv = obj["metadata"]["resourceVersion"]
                    if event["type"] == "BOOKMARK":
                        continue
                    with self.cond:
                        # Secrets are named <agenttoken>-tok: record them under the AgentToken's name.
                        self.seen.setdefault(obj["metadata"]["name"].removesuffix("-tok"), time.monotonic())
                        self.cond.notify_all()
                    if self.stop.is_set():
                        return
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if not self.stop.is_set():
                    print(f"secret watch resumed after {exc!r}"[:200], file=sys.stderr)
                    self.stop.wait(0.2)
            finally:
                conn.close()

    def wait(self, names: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(n in self.seen for n in names):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [n for n in names if n not in self.seen]
                    raise TimeoutError(f"{len(missing)} Secrets not ready after {timeout}s")
                self.cond.wait(left)


def body(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": name},
        "spec": {
            "audience": ["https://api.example.com"],
            "scopes": ["read"],
            "ttl": "1h",
            "secret": {"name": f"{name}-tok"},
        },
    }


def create_many(custom: Any, names: list[str], workers: int = 8) -> dict[str, float]:
    started: dict[str, float] = {}

    def one(name: str) -> None:
        started[name] = time.monotonic()
        custom.create_namespaced_custom_object("agenttoken.dev", "v1alpha1", NS, "agenttokens", body(name))

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, names))
    return started


def restart_phase(core: Any, custom: Any, api_client: Any, rotations: int) -> dict[str, Any]:
    """Secret written -> pod-template patch, and patch -> rollout complete, for a 3-replica Deployment."""
    apps = kubernetes.client.AppsV1Api(api_client)
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "agent"},
        "spec": {
            "replicas": 3,
            "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {
                    "containers": [{"name": "a", "image": "example.invalid/a:1"}],
                    "volumes": [{"name": "t", "secret": {"secretName": "agent-tok"}}],
                },
            },
        },
    }
    apps.create_namespaced_deployment(NS, dep)
    token = body("agent")
    token["spec"]["rollout"] = {"targets": [{"kind": "Deployment", "name": "agent"}]}
    custom.create_namespaced_custom_object("agenttoken.dev", "v1alpha1", NS, "agenttokens", token)
    key = "agenttoken.dev/revision.agent"

    def template_value() -> str | None:
        d = apps.read_namespaced_deployment("agent", NS)
        return (d.spec.template.metadata.annotations or {}).get(key)

    def token_id() -> str | None:
        try:
            sec = core.read_namespaced_secret("agent-tok", NS)
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return (sec.metadata.annotations or {}).get("agenttoken.dev/token-id")

    def wait(what: str, probe: Any, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return time.monotonic()
            time.sleep(0.01)
        raise TimeoutError(what)

    def rolled(value: str) -> bool:
        d = apps.read_namespaced_deployment("agent", NS)
        st = d.status
        return bool(
            (d.spec.template.metadata.annotations or {}).get(key) == value
            and st.observed_generation >= d.metadata.generation
            and (st.updated_replicas or 0) == 3
            and (st.available_replicas or 0) == 3
            and (st.replicas or 0) == 3
        )

    wait("first token rolled", lambda: (v := token_id()) is not None and rolled(v))
    to_patch, to_complete, status_durations = [], [], []
    for i in range(rotations):
        old = token_id()
        custom.patch_namespaced_custom_object(
            "agenttoken.dev", "v1alpha1", NS, "agenttokens", "agent",
            {"metadata": {"annotations": {"agenttoken.dev/rotate": f"bench-{i}"}}},
        )  # fmt: skip
        written = wait("secret written", lambda old=old: (v := token_id()) is not None and v != old)
        new = token_id()
        assert new is not None
        patched = wait("template patched", lambda new=new: template_value() == new)
        done = wait("rollout complete", lambda new=new: rolled(new))
        to_patch.append(patched - written)
        to_complete.append(done - patched)
        st = custom.get_namespaced_custom_object("agenttoken.dev", "v1alpha1", NS, "agenttokens", "agent")
        deadline = time.monotonic() + 30
        while (st.get("status", {}).get("rollout", {}).get("state") != "Complete" or
               st["status"]["rollout"].get("tokenId") != new) and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.05)
            st = custom.get_namespaced_custom_object("agenttoken.dev", "v1alpha1", NS, "agenttokens", "agent")
        target = st["status"]["rollout"]["targets"][0]
        started = datetime.datetime.fromisoformat(target["startedAt"].replace("Z", "+00:00"))
        completed = datetime.datetime.fromisoformat(target["completedAt"].replace("Z", "+00:00"))
        status_durations.append((completed - started).total_seconds())
    return {
        "note": "debounce 2 s (default) is part of secret->patch",
        "secret_write_to_template_patch": summary(to_patch),
        "template_patch_to_rollout_complete": summary(to_complete),
        "rollout_duration_in_status_s": summary(status_durations),
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--burst", type=int, default=100)
    parser.add_argument("--scale", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=30)
    parser.add_argument("--rotations", type=int, default=10)
    args = parser.parse_args()
    results: dict[str, Any] = {
        "benchmark": "lifecycle",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.start()
        results["cluster_start_s"] = round(cluster.started_in, 2)
        env = cluster.env()
        install(env, examples=False)
        subprocess.run(
            [str(Path(sys.executable).parent / "kubectl"), "create", "ns", NS], env=env, check=True
        )
        op = start_operator(env, Path(tmp) / "operator.log")
        watcher: SecretWatcher | None = None
        try:
            api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
            core, custom = (
                kubernetes.client.CoreV1Api(api_client),
                kubernetes.client.CustomObjectsApi(api_client),
            )
            watcher = SecretWatcher(cluster)

            singles = []
            for i in range(10):
                name = f"single-{i}"
                started = create_many(custom, [name], workers=1)
                watcher.wait([name], 30)
                singles.append(watcher.seen[name] - started[name])
            results["single_apply_to_secret"] = summary(singles)

            names = [f"burst-{i}" for i in range(args.burst)]
            t0 = time.monotonic()
            started = create_many(custom, names)
            watcher.wait(names, 120)
            results["burst_apply_to_secret"] = summary([watcher.seen[n] - started[n] for n in names])
            results["burst_apply_to_secret"]["wall_s"] = round(max(watcher.seen[n] for n in names) - t0, 3)

            results["restart"] = restart_phase(core, custom, api_client, rotations=args.rotations)

            names = [f"scale-{i}" for i in range(args.scale)]
            t0 = time.monotonic()
            started = create_many(custom, names)
            watcher.wait(names, 600)
            total = len(singles) + args.burst + args.scale
            scale = summary([watcher.seen[n] - started[n] for n in names])
            scale["wall_s"] = round(max(watcher.seen[n] for n in names) - t0, 3)
            scale["throughput_per_s"] = round(args.scale / scale["wall_s"], 1)
            results["scale_apply_to_secret"] = scale
            time.sleep(5)  # let status writes settle before measuring idle
            cpu0, w0 = cpu_seconds(op.pid), time.monotonic()
            time.sleep(args.idle_seconds)
            idle_cpu = (cpu_seconds(op.pid) - cpu0) / (time.monotonic() - w0)
            results["operator_at_scale"] = {
                "agenttokens": total,
                "rss_mb": round(rss_mb(op.pid), 1),
                "idle_cpu_fraction_of_core": round(idle_cpu, 4),
                "idle_window_s": args.idle_seconds,
            }
        except BaseException:
            subprocess.run(
                [str(Path(sys.executable).parent / "kubectl"), "get", "agenttokens,secrets", "-n", NS],
                env=env,
            )
            print(
                "operator log tail:\n"
                + "\n".join((Path(tmp) / "operator.log").read_text().splitlines()[-40:])
            )
            raise
        finally:
            if watcher is not None:
                watcher.stop.set()
            op.terminate()
            op.wait(timeout=20)
            cluster.stop()
    out = REPO_ROOT / "bench" / "results" / "lifecycle.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

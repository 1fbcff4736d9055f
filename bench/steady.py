"""Steady state at scale: 10,000 AgentTokens held by one operator process.

    .venv/bin/python bench/steady.py [--tokens 10000] [--short 100] [--idle-seconds 300]

1. `--tokens` AgentTokens (1 h TTL) are applied and their Secrets awaited.
2. Idle window: operator RSS and CPU over `--idle-seconds` with nothing due.
   Goal ([perf] #17): RSS <= 200 MB, CPU <= 5 % of a core.
3. Renewal lag: `--short` more AgentTokens with a 60 s TTL renew every ~30 s for `--lag-seconds`
   while all the others are held. Lag = when the renewed Secret is seen (a watch, wall clock)
   minus when it was due (the operator's own `schedule.renewal_time` of the previous token, from
   the Secret's annotations and the AgentToken's uid, computed here). Goal: p99 <= 2 s.
4. Restart: the operator is stopped and started again; the time from process start until it
   knows and has scheduled every AgentToken (`agenttoken_tokens`), and until each was looked at
   once (`agenttoken_schedule_lag_seconds_count`), with no token minted again; the new process's
   peak RSS (VmHWM, goal <= 250 MB) and its RSS `--settle-seconds` later.

Writes bench/results/steady.json (the committed one is a full-size run: `--tokens 10000`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import kubernetes

from agenttoken.api import ANN_TOKEN_ID
from agenttoken.core.model import parse_spec
from agenttoken.core.secretdata import TokenRecord
from agenttoken.core.timing import renewal_time
from benchsupport import (
    SELECTOR,
    Profiler,
    SecretWatcher,
    cpu_by_process,
    cpu_seconds,
    header,
    log_tail,
    metric,
    peak_rss_mb,
    rss_mb,
    start_operator,
    stop,
    summary,
    teardown,
    write,
)
from devcluster import LocalCluster, install
from lifecycle import create_many

NS, SHORT_NS = "steady", "steady-short"


def token(name: str, ttl: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "audience": ["https://api.example.com"],
        "scopes": ["read"],
        "ttl": ttl,
        "secret": {"name": f"{name}-tok"},
    }
    if ttl == "60s":
        spec["renewBeforePercentage"] = 50
    return {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": name},
        "spec": spec,
    }


def renewal_lags(
    events: list[tuple[float, str, dict[str, Any]]], spec: dict[str, Any], since: float = 0.0
) -> list[float]:
    """Seen minus due, for every Secret whose token id changed (a renewal, not the first issue);
    only renewals seen at or after `since` (wall clock) count, the events before are their base."""
    policy = parse_spec(spec).renewal
    last: dict[str, TokenRecord] = {}
    lags = []
    for seen, _, obj in events:
        meta = obj["metadata"]
        record = TokenRecord.from_annotations(meta.get("annotations") or {})
        if record is None:
            continue
        name = meta["name"]
        before = last.get(name)
        if before is not None and before.token_id != record.token_id:
            uid = (meta.get("ownerReferences") or [{}])[0].get("uid", "")
            due = renewal_time(before.issued_at, before.expires_at, policy, uid)
            if seen >= since:
                lags.append(seen - due.timestamp())
        last[name] = record
    return lags


def token_ids(cluster: LocalCluster) -> dict[str, str]:
    """Secret name -> token id in NS (the long-TTL ones): a restart must not mint any of them again."""
    _, raw = cluster.api("GET", f"/api/v1/namespaces/{NS}/secrets?labelSelector={SELECTOR}", timeout=120)
    return {
        i["metadata"]["name"]: (i["metadata"].get("annotations") or {}).get(ANN_TOKEN_ID, "")
        for i in json.loads(raw)["items"]
    }


def wait_metric(port: int, name: str, at_least: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = metric(port, name)
        except OSError:
            value = None
        if value is not None and value >= at_least:
            return time.monotonic()
        time.sleep(0.25)
    raise TimeoutError(f"{name} < {at_least} after {timeout}s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=10000)
    parser.add_argument("--short", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=300)
    parser.add_argument("--lag-seconds", type=float, default=150)
    parser.add_argument(
        "--settle-seconds", type=float, default=30, help="after the restart, before RSS again"
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the operator while it starts again")
    args = parser.parse_args()
    results = header(
        "steady",
        tokens=args.tokens,
        short=args.short,
        idle_seconds=args.idle_seconds,
        lag_seconds=args.lag_seconds,
    )
    kubectl = str(Path(sys.executable).parent / "kubectl")
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.start()
        env = cluster.env()
        install(env, examples=False)
        for ns in (NS, SHORT_NS):
            subprocess.run([kubectl, "create", "ns", ns], env=env, check=True, capture_output=True)
        log = Path(tmp) / "operator.log"
        op = start_operator(env, log)
        watchers: list[SecretWatcher] = []
        try:
            api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
            custom = kubernetes.client.CustomObjectsApi(api_client)
            api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = 8

            def apply(ns: str, ttl: str) -> Any:
                return lambda n: custom.create_namespaced_custom_object(
                    "agenttoken.dev", "v1alpha1", ns, "agenttokens", token(n, ttl)
                )

            # 1. apply
            watcher = SecretWatcher(cluster, NS)
            watchers.append(watcher)
            names = [f"t{i}" for i in range(args.tokens)]
            t0 = time.monotonic()
            create_many(apply(NS, "1h"), names)
            watcher.wait(names, 3600)
            wall = max(watcher.seen.values()) - t0
            results["apply"] = {"wall_s": round(wall, 1), "secrets_per_s": round(args.tokens / wall, 1)}
            watcher.stop.set()

            # 2. idle
            time.sleep(20)  # status writes and Events of the last ones settle
            pids = {**cluster.pids, "operator": op.pid}
            cpu, w0, rss_max = cpu_by_process(pids), time.monotonic(), 0.0
            while time.monotonic() - w0 < args.idle_seconds:
                rss_max = max(rss_max, rss_mb(op.pid))
                time.sleep(5)
            used = cpu_by_process(pids, since=cpu)
            window = time.monotonic() - w0
            results["idle"] = {
                "agenttokens": args.tokens,
                "window_s": round(window, 1),
                "operator_rss_mb": round(rss_mb(op.pid), 1),
                "operator_rss_max_mb": round(rss_max, 1),
                "operator_cpu_fraction_of_core": round(used["operator"] / window, 4),
                "cpu_fraction_of_core_by_process": {k: round(v / window, 4) for k, v in used.items()},
            }

            # 3. renewal lag over short-TTL tokens, with all the others held
            short = SecretWatcher(cluster, SHORT_NS, keep_events=True)
            watchers.append(short)
            snames = [f"s{i}" for i in range(args.short)]
            create_many(apply(SHORT_NS, "60s"), snames)
            short.wait(snames, 600)
            cpu0, l0 = cpu_seconds(op.pid), time.monotonic()
            time.sleep(args.lag_seconds)
            assert short.events is not None
            lags = renewal_lags(list(short.events), token("x", "60s")["spec"])
            results["renewal_lag"] = {
                **summary(lags),
                "agenttokens_held": args.tokens + args.short,
                "operator_cpu_fraction_of_core": round(
                    (cpu_seconds(op.pid) - cpu0) / (time.monotonic() - l0), 4
                ),
                "operator_rss_mb": round(rss_mb(op.pid), 1),
            }

            # 4. restart
            total = args.tokens + args.short
            ids_before = token_ids(cluster)
            stop(op)
            t0 = time.monotonic()
            op = start_operator(env, log)
            live = time.monotonic()
            with Profiler(op.pid, "restart", enabled=args.profile):
                known = wait_metric(op.http_port, "agenttoken_tokens", total, 900)  # type: ignore[attr-defined]
                looked = wait_metric(op.http_port, "agenttoken_schedule_lag_seconds_count", total, 900)  # type: ignore[attr-defined]
            time.sleep(5)
            rss_scheduled = rss_mb(op.pid)
            time.sleep(args.settle_seconds)  # the initial burst's garbage handed back (runtime.memory)
            results["restart"] = {
                "agenttokens": total,
                "liveness_s": round(live - t0, 2),
                "all_scheduled_s": round(known - t0, 2),
                "all_looked_at_once_s": round(looked - t0, 2),
                "operator_cpu_s": round(cpu_seconds(op.pid), 1),
                "operator_rss_mb": round(rss_scheduled, 1),
                "operator_rss_settled_mb": round(rss_mb(op.pid), 1),
                "settle_s": args.settle_seconds,
                "operator_rss_peak_mb": round(peak_rss_mb(op.pid), 1),
                "reminted_long_ttl_tokens": sum(
                    1 for k, v in token_ids(cluster).items() if ids_before.get(k) != v
                ),
            }
            results["goals"] = {
                "rss_le_200mb": results["idle"]["operator_rss_max_mb"] <= 200,
                "restart_peak_le_250mb": results["restart"]["operator_rss_peak_mb"] <= 250,
                "restart_all_scheduled_le_10s": results["restart"]["all_scheduled_s"] <= 10,
                "idle_cpu_le_5pct": results["idle"]["operator_cpu_fraction_of_core"] <= 0.05,
                "lag_p99_le_2s": results["renewal_lag"]["p99_s"] <= 2.0,
            }
        except BaseException:
            log_tail(log)
            raise
        finally:
            teardown(watchers, op, cluster)
    write("steady", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

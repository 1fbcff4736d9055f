"""Sharding: AgentTokens served by several operator replicas over shard Leases ([ha]).

    .venv/bin/python bench/sharding.py [--tokens 30000] [--namespaces 120] [--short 120]
                                        [--replicas 3] [--shards 6] [--lag-seconds 120]
                                        [--create-workers 32] [--mint one|replicas] [--out PATH]

1. `--replicas` operators run with `--shards`; every one its own identity; their idle RSS.
2. `--tokens` AgentTokens (1 h TTL) over `--namespaces` namespaces (a namespace's tokens share a
   shard), plus `--short` with a 60 s TTL renewed at 50 % (every ~30 s) over the same namespaces,
   created by `--create-workers` concurrent requests. `--mint one` (default): the replicas are
   stopped, every AgentToken is created, one replica holding every shard mints them (each
   watch event then reaches one operator, not three: the setup's bottleneck is the apiserver),
   it is stopped, and the replicas start again on the issued tokens (time until every
   AgentToken is served again: a cold start at that size). `--mint replicas`: created while
   the replicas run, which mint them. Their Secrets awaited; the steady state is measured after
   that either way: each replica's shards, AgentTokens served (`agenttoken_tokens`) and cached
   (`agenttoken_tokens_cached`: its own shards' only), and RSS.
3. Renewal lag of the short tokens over `--lag-seconds` (seen minus due, as bench/steady.py).
4. kill -9 of one replica: until its shards are held by the survivors (Lease holders, polled),
   until the survivors have read every AgentToken of them and queued it again (their
   `agenttoken_tokens_cached` and `agenttoken_tokens` add up to all AgentTokens), the lag of
   every short token's renewal from the kill on (those of the lost shards apart: the ones due
   during the outage are the late ones) over the next 60 s, and the survivors' shares and RSS.

Writes bench/results/sharding.json (or `--out`, with the operators' logs in `<out>.logs/`) with
the size actually run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes

from agenttoken.core.lease import shard_of
from benchsupport import (
    SecretWatcher,
    cpu_by_process,
    header,
    loadavg,
    log_tail,
    metric,
    rss_mb,
    start_operator,
    stop,
    summary,
    write,
)
from devcluster import LocalCluster, install
from lifecycle import create_many
from steady import renewal_lags, token

LEASES = "/apis/coordination.k8s.io/v1/namespaces/agenttoken-system/leases?labelSelector=agenttoken.dev%2Flease%3Dshard"


def holders(cluster: LocalCluster) -> dict[str, str]:
    _, raw = cluster.api("GET", LEASES, timeout=30)
    return {
        i["metadata"]["name"]: (i.get("spec") or {}).get("holderIdentity") or ""
        for i in json.loads(raw)["items"]
    }


def replica_figures(ops: dict[str, subprocess.Popen[bytes]]) -> dict[str, Any]:
    return {
        name: {
            "rss_mb": round(rss_mb(op.pid), 1),
            "shards_held": metric(op.http_port, "agenttoken_shards_held"),  # type: ignore[attr-defined]
            "agenttokens_served": metric(op.http_port, "agenttoken_tokens"),  # type: ignore[attr-defined]
            "agenttokens_cached": metric(op.http_port, "agenttoken_tokens_cached"),  # type: ignore[attr-defined]
            "secrets_cached": metric(op.http_port, "agenttoken_secrets_cached"),  # type: ignore[attr-defined]
        }
        for name, op in ops.items()
    }


def object_bytes(cluster: LocalCluster, namespace: str) -> dict[str, float]:
    """Mean JSON size of one AgentToken and one managed Secret as a watch sends them."""
    sizes = {}
    for kind, path in (
        ("agenttoken", f"/apis/agenttoken.dev/v1alpha1/namespaces/{namespace}/agenttokens"),
        (
            "secret",
            f"/api/v1/namespaces/{namespace}/secrets?labelSelector=app.kubernetes.io%2Fmanaged-by%3Dagent-token-operator",
        ),
    ):
        _, raw = cluster.api("GET", path, timeout=60)
        items = json.loads(raw)["items"]
        sizes[kind] = round(sum(len(json.dumps(i)) for i in items) / max(1, len(items)))
    return sizes


def projection(results: dict[str, Any], total: int, target: int = 100_000) -> dict[str, Any]:
    """Per-token costs measured here, extrapolated linearly to `target` AgentTokens (an upper
    bound: warm-up and fixed costs are charged to the tokens too)."""
    cp = results["control_plane_rss_mb"]
    per_token_kb = {k: round((v["after"] - v["before"]) * 1024 / total, 2) for k, v in cp.items()}
    idle, loaded = results["replicas_idle"], results["replicas"]
    deltas = {n: loaded[n]["rss_mb"] - idle[n]["rss_mb"] for n in loaded}
    # A replica keeps the AgentToken bodies and Secrets of its own shards, and of every other
    # AgentToken its name (controllers.takeover); it still parses every event of the cluster-wide
    # watches: delta = a * total + b * served. Least squares over the replicas (if they serve
    # different counts); else all of it is charged to the cluster-wide part.
    served = {n: loaded[n]["agenttokens_served"] or 0.0 for n in loaded}
    mean_s, mean_d = sum(served.values()) / len(served), sum(deltas.values()) / len(deltas)
    var = sum((x - mean_s) ** 2 for x in served.values())
    b = sum((served[n] - mean_s) * (deltas[n] - mean_d) for n in served) / var if var > 0 else 0.0
    b = max(0.0, b)
    a = max(0.0, (mean_d - b * mean_s) / total)
    replicas = len(loaded)
    worst_idle = max(v["rss_mb"] for v in idle.values())
    # What a takeover added to the survivors: RSS growth per AgentToken gained (bodies, Secrets,
    # schedule; no initial listing in it). A lower bound: growth can fill arenas already there.
    kill = results.get("kill") or {}
    gained = [
        (after["rss_mb"] - loaded[n]["rss_mb"], (after["agenttokens_served"] or 0) - served[n])
        for n, after in (kill.get("replicas") or {}).items()
    ]
    takeover_kb = [round(mb * 1024 / count, 2) for mb, count in gained if count > 0]
    sizes = results["object_bytes"]
    renewals_per_s = target / (3600 * 2 / 3)  # 1 h tokens renewed at 2/3 of their life
    per_event = sizes["agenttoken"] + sizes["secret"]  # one status and one Secret event per renewal
    return {
        "tokens": target,
        "assumes": "linear in the AgentTokens; 1 h tokens renewed at 2/3 of their life; one Secret "
        "update and one status patch per renewal, each a full object on every replica's watch; "
        + (
            "replica RSS after a cold start on the issued tokens (--mint one): it includes what "
            "processing the initial listings of every shard's AgentTokens and Secrets left behind "
            "(the allocator keeps its high-water mark), charged to the AgentTokens of the cluster"
            if results["params"].get("mint") == "one"
            else "replica RSS after the replicas minted every token (grown while running)"
        ),
        "per_token_control_plane_kb": per_token_kb,
        "per_token_replica_kb": {
            "cached_everywhere": round(a * 1024, 2),
            "served_here": round(b * 1024, 2),
            "gained_by_takeover": takeover_kb,
        },
        "control_plane_mb": {k: round(v["before"] + per_token_kb[k] * target / 1024) for k, v in cp.items()},
        "replica_rss_mb": round(worst_idle + (a * target + b * target / replicas)),
        "renewals_per_s": round(renewals_per_s, 1),
        "watch_kb_per_s_per_replica": round(renewals_per_s * per_event / 1024),
        "apiserver_watch_out_kb_per_s": round(renewals_per_s * per_event * replicas / 1024),
    }


def wait_for(what: str, probe: Any, timeout: float, interval: float = 0.2) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return time.monotonic()
        time.sleep(interval)
    raise TimeoutError(what)


def queued_again(ops: dict[str, subprocess.Popen[bytes]], total: int) -> bool:
    """Every AgentToken cached and queued by the replicas left (each holds its own shards' only)."""
    ports = [op.http_port for op in ops.values()]  # type: ignore[attr-defined]
    cached = sum(metric(p, "agenttoken_tokens_cached") or 0.0 for p in ports)
    return cached >= total and sum(metric(p, "agenttoken_tokens") or 0.0 for p in ports) >= total


def creator(cluster: LocalCluster, namespaces: list[str], workers: int) -> Callable[[str, str], Any]:
    """create(name, ttl): one AgentToken in namespace `name`'s number modulo the namespaces."""
    api_client = kubernetes.config.new_client_from_config(config_file=str(cluster.kubeconfig))
    custom = kubernetes.client.CustomObjectsApi(api_client)
    api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] = workers

    def create(name: str, ttl: str) -> Any:
        ns = namespaces[int(name[1:]) % len(namespaces)]
        return custom.create_namespaced_custom_object(
            "agenttoken.dev", "v1alpha1", ns, "agenttokens", token(name, ttl)
        )

    return create


def apply(
    results: dict[str, Any],
    cluster: LocalCluster,
    ops: dict[str, subprocess.Popen[bytes]],
    watcher: SecretWatcher,
    namespaces: list[str],
    args: argparse.Namespace,
) -> None:
    """Create every AgentToken with `--create-workers` requests at once, while `ops` run (none:
    `--mint one` starts one replica holding every shard once all exist); wait for every Secret."""
    create = creator(cluster, namespaces, args.create_workers)
    names = [f"t{i}" for i in range(args.tokens)]
    snames = [f"s{i}" for i in range(args.short)]
    pids = {**cluster.pids, **{n: op.pid for n, op in ops.items()}}
    cpu_before = cpu_by_process(pids)
    t0 = time.monotonic()
    create_many(lambda n: create(n, "60s"), snames, workers=args.create_workers)
    create_many(lambda n: create(n, "1h"), names, workers=args.create_workers)
    created = time.monotonic() - t0
    minting = time.monotonic()
    if not ops:
        log = args.logs / "minter.log"
        ops["minter"] = start_operator(
            cluster.env(), log, extra=("--shards", str(args.shards), "--identity", "minter")
        )
        pids["minter"] = ops["minter"].pid
    watcher.wait(names + snames, 7200)
    minted = max(watcher.seen.values()) - minting
    results["apply"] = {
        "mint": args.mint,
        "created_s": round(created, 1),
        "creates_per_s": round((args.tokens + args.short) / created, 1),
        "minted_s": round(minted, 1),  # from the last create (replicas) or the minter's start (one)
        "wall_s": round(time.monotonic() - t0, 1),
        "cpu_s_by_process": cpu_by_process(pids, cpu_before),
    }


def kill_one(
    results: dict[str, Any],
    cluster: LocalCluster,
    ops: dict[str, subprocess.Popen[bytes]],
    watcher: SecretWatcher,
    args: argparse.Namespace,
) -> None:
    """kill -9 of the replica holding the most shards but not shard 0 (if possible); until its
    shards are held again, until their AgentTokens are read and queued again, and the lags."""
    held = holders(cluster)
    victim = max(
        ops,
        key=lambda n: (sum(1 for h in held.values() if h == n), held.get("agenttoken-shard-0") != n),
    )
    lost = sorted(s for s, h in held.items() if h == victim)
    lost_numbers = {int(s.removeprefix("agenttoken-shard-")) for s in lost}
    os.kill(ops[victim].pid, signal.SIGKILL)
    ops[victim].wait()
    killed, killed_wall = time.monotonic(), time.time()
    del ops[victim]
    total = args.tokens + args.short
    held_again = wait_for(
        "the dead replica's shards held again",
        lambda: all(holders(cluster)[s] not in ("", victim) for s in lost),
        120,
    )
    queued = wait_for("every AgentToken queued again", lambda: queued_again(ops, total), 600)
    time.sleep(max(0.0, 60 - (time.monotonic() - killed)))
    assert watcher.events is not None
    short = [e for e in watcher.events if e[2]["metadata"]["name"].startswith("s")]
    lost_short = [e for e in short if shard_of(e[2]["metadata"]["namespace"], args.shards) in lost_numbers]
    spec = token("x", "60s")["spec"]
    results["kill"] = {
        "victim": victim,
        "shards_lost": lost,
        "reserved_after_s": round(held_again - killed, 2),
        "queued_again_after_s": round(queued - killed, 2),
        "renewal_lag_after_kill": summary(renewal_lags(short, spec, since=killed_wall) or [0.0]),
        "renewal_lag_after_kill_lost_shards": summary(
            renewal_lags(lost_short, spec, since=killed_wall) or [0.0]
        ),
        "replicas": replica_figures(ops),
        "holders": holders(cluster),
    }


def start_replicas(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, subprocess.Popen[bytes]]:
    ops: dict[str, subprocess.Popen[bytes]] = {}
    for i in range(args.replicas):
        name = f"replica-{i}"
        log = args.logs / f"{name}.log"
        ops[name] = start_operator(
            cluster.env(), log, extra=("--shards", str(args.shards), "--identity", name)
        )
    wait_for(
        "every shard held",
        lambda: sum(1 for h in holders(cluster).values() if h) == args.shards,
        600,
    )
    share = -(-args.shards // args.replicas)
    wait_for(  # the first replica took all, then handed back as the others joined
        "the shares settled",
        lambda: all(metric(op.http_port, "agenttoken_shards_held") == share for op in ops.values()),  # type: ignore[attr-defined]
        600,
    )
    return ops


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=30000)
    parser.add_argument("--namespaces", type=int, default=120)
    parser.add_argument("--short", type=int, default=120)
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--lag-seconds", type=float, default=120)
    parser.add_argument("--create-workers", type=int, default=32)
    parser.add_argument(
        "--mint",
        choices=("one", "replicas"),
        default="one",
        help="one: create every AgentToken first, let one replica holding every shard mint them, "
        "stop it and start the replicas on the issued tokens (a third of the watch traffic while "
        "minting); replicas: create them while the replicas run",
    )
    parser.add_argument("--out", type=Path, default=None, help="instead of bench/results/sharding.json")
    args = parser.parse_args()
    results = header("sharding", **{k: v for k, v in vars(args).items() if k != "out"})
    kubectl = str(Path(sys.executable).parent / "kubectl")
    namespaces = [f"shard-bench-{i}" for i in range(args.namespaces)]
    total = args.tokens + args.short
    with tempfile.TemporaryDirectory() as tmp:
        args.logs = args.out.with_suffix(".logs") if args.out else Path(tmp)
        args.logs.mkdir(parents=True, exist_ok=True)
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.start()
        env = cluster.env()
        install(env, examples=False)
        for ns in namespaces:
            subprocess.run([kubectl, "create", "ns", ns], env=env, check=True, capture_output=True)
        ops: dict[str, subprocess.Popen[bytes]] = {}
        watchers: list[SecretWatcher] = []
        try:
            ops = start_replicas(cluster, args)
            results["replicas_idle"] = replica_figures(ops)
            control_plane_before = {k: round(rss_mb(pid), 1) for k, pid in cluster.pids.items()}
            watcher = SecretWatcher(cluster, "", collection="/api/v1/secrets", keep_events=True)
            watchers.append(watcher)
            if args.mint == "one":
                for op in ops.values():
                    stop(op)  # hands its Leases back
                ops = {}
            apply(results, cluster, ops, watcher, namespaces, args)
            if args.mint == "one":
                stop(ops.pop("minter"))
                started = time.monotonic()
                ops = start_replicas(cluster, args)
                served = wait_for("every AgentToken served", lambda: queued_again(ops, total), 900)
                results["apply"]["replicas_start_to_all_served_s"] = round(served - started, 1)
            time.sleep(15)  # status writes and Events of the last ones settle
            results["loadavg_after_apply"] = loadavg()
            results["replicas"] = replica_figures(ops)
            results["object_bytes"] = object_bytes(cluster, namespaces[0])
            # Per-token costs for the projection (docs/performance.md): control-plane RSS growth.
            results["control_plane_rss_mb"] = {
                k: {"before": control_plane_before[k], "after": round(rss_mb(pid), 1)}
                for k, pid in cluster.pids.items()
            }
            results["holders"] = holders(cluster)

            # 3. renewal lag, all replicas up (steady state: every token issued, the burst settled)
            assert watcher.events is not None
            mark = time.time()
            time.sleep(args.lag_seconds)
            short_events = [e for e in watcher.events if e[2]["metadata"]["name"].startswith("s")]
            lags = renewal_lags(short_events, token("x", "60s")["spec"], since=mark)
            results["renewal_lag"] = summary(lags or [0.0])

            # 4. kill -9 of one replica
            kill_one(results, cluster, ops, watcher, args)
            results["projection_100k"] = projection(results, total)
            results["goals"] = {
                "lag_p99_le_2s": results["renewal_lag"]["p99_s"] <= 2.0,
                "reserved_le_20s": max(
                    results["kill"]["reserved_after_s"], results["kill"]["queued_again_after_s"]
                )
                <= 20,
            }
        except BaseException:
            for path in sorted(args.logs.glob("*.log")):
                print(f"--- {path.name}")
                log_tail(path)
            raise
        finally:
            for w in watchers:
                w.stop.set()
            for op in ops.values():
                stop(op)
            cluster.stop()
    write("sharding", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

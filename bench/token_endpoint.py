"""Token endpoint benchmark (delivery PerPod): grants per second and latency on this machine.

    .venv/bin/python bench/token_endpoint.py [--pods 200] [--seconds 20] [--concurrency 32]

A local control plane, the operator as a process, one PerPod AgentToken and `--pods` pod objects
of its ServiceAccount, each with a pod-bound ServiceAccount token (TokenRequest, as a kubelet
projects it). Phase "cold": the first grant of every pod (a TokenReview each). Phase "warm": as
many grants as `--concurrency` clients get through in `--seconds`, round-robin over the pods
(pods refreshing with the projected token they hold: TokenReview answered from the cache): the
throughput. Phase "paced": `--rate` grants/s for `--seconds` (open loop): the latency at that load.
Goal ([agents] #18): >= 500 grants/s, p99 <= 50 ms. Writes bench/results/token-endpoint.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from benchsupport import cpu_seconds, header, percentile, start_operator, stop, summary, wait_for, write
from devcluster import LocalCluster, install

NS = "bench"
ISSUER = "https://agent-token-operator.agenttoken-system.svc/issuers/builtin"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def api(cluster: LocalCluster, method: str, path: str, body: Any = None) -> dict[str, Any]:
    status, raw = cluster.api(method, path, body)
    if status >= 300:
        raise RuntimeError(f"{method} {path}: HTTP {status}")
    result: dict[str, Any] = json.loads(raw)
    return result


def prepare(cluster: LocalCluster, pods: int) -> list[str]:
    """The namespace, ServiceAccount, pods and one pod-bound token per pod."""
    api(cluster, "POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
    api(cluster, "POST", f"/api/v1/namespaces/{NS}/serviceaccounts", {"metadata": {"name": "agent"}})
    assertions = []
    for i in range(pods):
        pod = api(
            cluster,
            "POST",
            f"/api/v1/namespaces/{NS}/pods",
            {
                "metadata": {"name": f"agent-{i}"},
                "spec": {"serviceAccountName": "agent", "containers": [{"name": "a", "image": "none"}]},
            },
        )
        req = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [f"{ISSUER}/token"],
                "expirationSeconds": 3600,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": f"agent-{i}",
                                   "uid": pod["metadata"]["uid"]},
            },
        }  # fmt: skip
        answer = api(cluster, "POST", f"/api/v1/namespaces/{NS}/serviceaccounts/agent/token", req)
        assertions.append(answer["status"]["token"])
    return assertions


async def one(session: aiohttp.ClientSession, url: str, assertion: str) -> tuple[float, int]:
    started = time.perf_counter()
    async with session.post(url, data={"grant_type": JWT_BEARER, "assertion": assertion}) as resp:
        await resp.read()
        return time.perf_counter() - started, resp.status


def server_buckets(port: int) -> dict[float, float]:
    """The operator's own histogram of issued grants: cumulative count per bucket bound."""
    name = "agenttoken_token_endpoint_duration_seconds"
    # restricted_registry selects by sample name: the buckets are `<name>_bucket`.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?name[]={name}_bucket", timeout=10) as resp:
        lines = resp.read().decode().splitlines()
    out = {}
    for line in lines:
        if line.startswith(f"{name}_bucket{{") and 'result="issued"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def server_p99(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The bucket bound under which 99 % of the grants between two scrapes were answered."""
    diff = {le: after[le] - before.get(le, 0.0) for le in sorted(after)}
    total = diff.get(float("inf"), 0.0)
    return next((le for le, n in diff.items() if total and n >= 0.99 * total), None)


async def open_loop(
    session: aiohttp.ClientSession, url: str, assertions: list[str], seconds: float, rate: float
) -> dict[str, Any]:
    """Grants sent at a fixed `rate` (not waiting for answers); latency from the scheduled send
    time, so a stall counts for every request it delayed (no coordinated omission)."""
    start = time.perf_counter()
    total = int(seconds * rate)
    results: list[tuple[float, int]] = []

    async def send(i: int, due: float) -> None:
        form = {"grant_type": JWT_BEARER, "assertion": assertions[i % len(assertions)]}
        async with session.post(url, data=form) as resp:
            await resp.read()
            results.append((time.perf_counter() - due, resp.status))

    lags: list[float] = []

    async def probe() -> None:
        # The bench's own event-loop lag: a stall here is the client's, not the endpoint's.
        while True:
            before = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - before - 0.005)

    prober = asyncio.create_task(probe())
    # One ticker starts each request when it is due (not 10,000 sleeping tasks up front).
    tasks = []
    for i in range(total):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(send(i, due)))
    await asyncio.gather(*tasks)
    prober.cancel()
    elapsed = time.perf_counter() - start
    statuses: dict[int, int] = {}
    for _, status in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        **summary([r[0] for r in results]),
        "offered_per_s": rate,
        "client_loop_lag": {"p99_s": round(percentile(lags, 99), 4), "max_s": round(max(lags), 4)},
        "statuses": statuses,
        "grants_per_s": round(statuses.get(200, 0) / elapsed, 1),
    }


async def load(
    port: int, assertions: list[str], seconds: float, concurrency: int, rate: float
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/token"
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        cold = [await one(session, url, a) for a in assertions]  # one TokenReview each
        deadline = time.monotonic() + seconds
        counter = iter(range(10**9))

        async def client() -> None:
            while time.monotonic() < deadline:
                latency, status = await one(session, url, assertions[next(counter) % len(assertions)])
                latencies.append(latency)
                statuses[status] = statuses.get(status, 0) + 1

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    # Paced: enough connections that a brief stall does not queue behind a connection limit.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as session:
        before = server_buckets(port)
        paced = await open_loop(session, url, assertions, seconds, rate)
        paced["server_p99_bucket_s"] = server_p99(before, server_buckets(port))
    return {
        "paced": paced,
        "cold": {**summary([c[0] for c in cold]), "ok": sum(1 for c in cold if c[1] == 200)},
        "warm": {
            **summary(latencies),
            "statuses": statuses,
            "grants_per_s": round(statuses.get(200, 0) / elapsed, 1),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pods", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=float, default=500, help="grants/s of the paced phase")
    args = parser.parse_args()
    results = header(
        "token-endpoint", pods=args.pods, seconds=args.seconds, concurrency=args.concurrency, rate=args.rate
    )
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.start()
        op = None
        try:
            env = cluster.env()
            install(env, examples=False)
            assertions = prepare(cluster, args.pods)
            op = start_operator(env, Path(tmp) / "operator.log", extra=("--issuer-url", ISSUER))
            body = {
                "apiVersion": "agenttoken.dev/v1alpha1", "kind": "AgentToken", "metadata": {"name": "agents"},
                "spec": {"audience": ["https://api.example.com"], "scopes": ["read"], "ttl": "10m",
                         "delivery": "PerPod", "serviceAccountName": "agent"},
            }  # fmt: skip
            api(cluster, "POST", f"/apis/agenttoken.dev/v1alpha1/namespaces/{NS}/agenttokens", body)

            def ready() -> bool | None:
                got = api(cluster, "GET", f"/apis/agenttoken.dev/v1alpha1/namespaces/{NS}/agenttokens/agents")
                conds = (got.get("status") or {}).get("conditions") or []
                return True if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) else None

            wait_for("AgentToken Ready", ready, timeout=60)
            cpu0 = cpu_seconds(op.pid)
            port: int = op.http_port  # type: ignore[attr-defined]
            results.update(asyncio.run(load(port, assertions, args.seconds, args.concurrency, args.rate)))
            results["operator_cpu_s"] = round(cpu_seconds(op.pid) - cpu0, 2)
        finally:
            if op is not None:
                stop(op)
            cluster.stop()
    results["goals"] = {
        "grants_per_s_at_least_500": results["warm"]["grants_per_s"] >= 500,
        "p99_at_most_50ms_at_500_per_s": results["paced"]["p99_s"] <= 0.05,
    }
    write("token-endpoint", results)
    print(json.dumps(results["goals"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

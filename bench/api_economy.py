"""API economy: apiserver writes per renewal, counted at the apiserver (its audit log).

    .venv/bin/python bench/api_economy.py [--tokens 10] [--renewals 3]

Runs a local control plane (whose audit policy logs every write at Metadata level), the
operator, and AgentTokens without rollout targets that renew every ~30 s; counts the operator's
writes between the first and the last renewal and divides by the renewals in that window.
Writes bench/results/api_economy.json. Goal ([measure]): <= 3 writes per renewal without targets.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from agenttoken.devcluster import REPO_ROOT, LocalCluster, install
from benchsupport import start_operator

NS = "economy"
OPERATOR_USER = "agenttoken-admin"  # the operator runs with the cluster's admin certificate here


def token(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "audience": ["https://api.example.com"],
            "ttl": "60s",
            "renewBeforePercentage": 50,
            "secret": {"name": f"{name}-tok"},
        },
    }


def revisions(cluster: LocalCluster) -> dict[str, int]:
    _, raw = cluster.api("GET", f"/apis/agenttoken.dev/v1alpha1/namespaces/{NS}/agenttokens")
    return {
        i["metadata"]["name"]: int((i.get("status") or {}).get("revision") or 0)
        for i in json.loads(raw)["items"]
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=10)
    parser.add_argument("--renewals", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.start()
        try:
            env = cluster.env()
            install(env, examples=False)
            cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
            op = start_operator(env, Path(tmp) / "operator.log")
            try:
                for i in range(args.tokens):
                    cluster.api(
                        "POST", f"/apis/agenttoken.dev/v1alpha1/namespaces/{NS}/agenttokens", token(f"t{i}")
                    )
                # Window: from every token at revision 1 until every token renewed `renewals` times.
                while min(revisions(cluster).values() or [0]) < 1:
                    time.sleep(0.5)
                start_revisions = revisions(cluster)
                window_start = datetime.datetime.now(datetime.UTC)
                while min(revisions(cluster).values()) < 1 + args.renewals:
                    time.sleep(0.5)
                window_end = datetime.datetime.now(datetime.UTC)
                renewals = sum(revisions(cluster)[n] - r for n, r in start_revisions.items())
            finally:
                op.terminate()
                op.wait(timeout=20)
            writes: collections.Counter[str] = collections.Counter()
            for line in (cluster.logs / "audit.log").read_text().splitlines():
                event = json.loads(line)
                when = datetime.datetime.fromisoformat(
                    event["requestReceivedTimestamp"].replace("Z", "+00:00")
                )
                if event["user"]["username"] != OPERATOR_USER or not window_start <= when <= window_end:
                    continue
                ref = event.get("objectRef") or {}
                if ref.get("namespace") != NS:
                    continue
                resource = ref.get("resource", "") + (
                    f"/{ref['subresource']}" if ref.get("subresource") else ""
                )
                writes[f"{event['verb']} {resource}"] += 1
        finally:
            cluster.stop()
    total = sum(writes.values())
    results = {
        "benchmark": "api_economy",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "tokens": args.tokens,
        "window_s": round((window_end - window_start).total_seconds(), 1),
        "renewals": renewals,
        "operator_writes": dict(sorted(writes.items())),
        "writes_per_renewal": round(total / renewals, 2) if renewals else None,
        "goal_writes_per_renewal": 3,
    }
    out = REPO_ROOT / "bench" / "results" / "api_economy.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

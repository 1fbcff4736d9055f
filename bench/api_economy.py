"""API economy: apiserver writes per renewal, with and without rollout targets, counted at the
apiserver (its audit log).

    .venv/bin/python bench/api_economy.py [--tokens 10] [--renewals 3]

Runs a local control plane (whose audit policy logs every write at Metadata level) and the
operator. Two namespaces at once: `economy` holds AgentTokens without rollout targets,
`economy-targets` the same number, each restarting its own 1-replica Deployment on renewal.
Every AgentToken has a 60 s TTL renewed at 50 %. The window starts when every AgentToken has
renewed once (so first issuance and first rollouts are behind us) and ends when each renewed
`--renewals` more times; the operator's writes in each namespace in that window are divided by
that namespace's renewals. Writes bench/results/api_economy.json.
Goal ([measure]): <= 3 writes per renewal without targets.
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

from benchsupport import header, start_operator, stop, write
from devcluster import LocalCluster, install

NAMESPACES = {"economy": False, "economy-targets": True}  # namespace -> with rollout targets
OPERATOR_USER = "agenttoken-admin"  # the operator runs with the cluster's admin certificate here
# ... and so do the local cluster's own components: their writes are told apart by user agent
CLUSTER_AGENTS = ("kube-controller-manager", "kube-scheduler", "kwok", "kubectl")


def token(name: str, namespace: str, targets: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "audience": ["https://api.example.com"],
        "ttl": "60s",
        "renewBeforePercentage": 50,
        "secret": {"name": f"{name}-tok"},
    }
    if targets:
        spec["rollout"] = {"strategy": "Restart", "targets": [{"kind": "Deployment", "name": name}]}
    return {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "containers": [{"name": "a", "image": "example.invalid/a:1"}],
                    "volumes": [{"name": "t", "secret": {"secretName": f"{name}-tok"}}],
                },
            },
        },
    }


def revisions(cluster: LocalCluster) -> dict[tuple[str, str], int]:
    found = {}
    for ns in NAMESPACES:
        _, raw = cluster.api("GET", f"/apis/agenttoken.dev/v1alpha1/namespaces/{ns}/agenttokens")
        for i in json.loads(raw)["items"]:
            found[ns, i["metadata"]["name"]] = int((i.get("status") or {}).get("revision") or 0)
    return found


def wait_revisions(cluster: LocalCluster, at_least: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    while True:
        now = revisions(cluster)
        if all(now.get(k, 0) >= v for k, v in at_least.items()):
            return now
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=10)
    parser.add_argument("--renewals", type=int, default=3)
    args = parser.parse_args()
    results = header("api_economy", tokens_per_namespace=args.tokens, renewals=args.renewals)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.start()
        try:
            env = cluster.env()
            install(env, examples=False)
            for ns, targets in NAMESPACES.items():
                cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
                if targets:
                    for i in range(args.tokens):
                        cluster.api("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment(f"t{i}"))
            op = start_operator(env, Path(tmp) / "operator.log")
            try:
                for ns, targets in NAMESPACES.items():
                    for i in range(args.tokens):
                        cluster.api(
                            "POST",
                            f"/apis/agenttoken.dev/v1alpha1/namespaces/{ns}/agenttokens",
                            token(f"t{i}", ns, targets),
                        )
                keys = [(ns, f"t{i}") for ns in NAMESPACES for i in range(args.tokens)]
                start_revisions = wait_revisions(cluster, dict.fromkeys(keys, 2))
                window_start = datetime.datetime.now(datetime.UTC)
                end_revisions = wait_revisions(
                    cluster, {k: v + args.renewals for k, v in start_revisions.items()}
                )
                window_end = datetime.datetime.now(datetime.UTC)
            finally:
                stop(op)
            writes: dict[str, collections.Counter[str]] = {ns: collections.Counter() for ns in NAMESPACES}
            for line in (cluster.logs / "audit.log").read_text().splitlines():
                event = json.loads(line)
                when = datetime.datetime.fromisoformat(
                    event["requestReceivedTimestamp"].replace("Z", "+00:00")
                )
                if (
                    event["user"]["username"] != OPERATOR_USER
                    or event.get("userAgent", "").startswith(CLUSTER_AGENTS)
                    or not window_start <= when <= window_end
                ):
                    continue
                ref = event.get("objectRef") or {}
                if ref.get("namespace") not in writes:
                    continue
                resource = ref.get("resource", "") + (
                    f"/{ref['subresource']}" if ref.get("subresource") else ""
                )
                writes[ref["namespace"]][f"{event['verb']} {resource}"] += 1
        finally:
            cluster.stop()
    results["window_s"] = round((window_end - window_start).total_seconds(), 1)
    for ns, targets in NAMESPACES.items():
        renewals = sum(end_revisions[k] - v for k, v in start_revisions.items() if k[0] == ns)
        total = sum(writes[ns].values())
        results["with_targets" if targets else "without_targets"] = {
            "namespace": ns,
            "agenttokens": args.tokens,
            "renewals": renewals,
            "operator_writes": dict(sorted(writes[ns].items())),
            "writes_per_renewal": round(total / renewals, 2) if renewals else None,
        }
    results["goal_writes_per_renewal_without_targets"] = 3
    results["goals"] = {"without_targets_le_3": (results["without_targets"]["writes_per_renewal"] or 99) <= 3}
    write("api_economy", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

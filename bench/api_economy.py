"""API economy: apiserver writes per new AgentToken and per renewal, with and without rollout
targets, counted at the apiserver (its audit log), never by our own counters.

    .venv/bin/python bench/api_economy.py [--tokens 10] [--new-tokens 100] [--renewals 3]

Runs a local control plane (whose audit policy logs every write at Metadata level; always on in
tools/devcluster: a few hundred bytes per write) with the chart's admission policies and the
operator. First `--new-tokens` AgentTokens are created at once in `economy-new`; every write in
that namespace from the first create until all are Ready (and their Events are out) counts,
the creates included: goal <= 3 per new token (create, Secret, status) plus the Events, which are
aggregated per namespace and reason in a burst. Then two namespaces at once: `economy` holds AgentTokens without rollout targets,
`economy-targets` the same number, each restarting its own 1-replica Deployment on renewal.
Every AgentToken has a 60 s TTL renewed at 50 %. Counting starts when every AgentToken has
renewed once (so first issuance and first rollouts are behind us) and goes renewal by renewal:
for each AgentToken, from its next renewal (a Secret patch) until `--renewals` renewals later,
every operator write to its own objects (status, Secret, Deployment, Events about them), so a
renewal's follow-ups (restart, the status when the rollout completes, RolloutComplete) count
with it; divided by the renewals counted. Writes bench/results/api_economy.json (or --out).
Goals ([measure], [perf]): <= 3 writes per renewal without targets, <= 6 with one target.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchsupport import header, start_operator, stop, write
from devcluster import LocalCluster, install

NAMESPACES = {"economy": False, "economy-targets": True}  # namespace -> with rollout targets
NEW_NS = "economy-new"
EVENT_WINDOW_S = 3.0  # after the last Ready: aggregated Events wait 1 s (kube.events.WINDOW)
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


Write = tuple[datetime.datetime, str, str, str]  # when, namespace, object name, "verb resource"


def audited(cluster: LocalCluster, with_client: bool = False) -> list[Write]:
    """Successful writes from the apiserver's audit log: the operator's (same admin user as this
    client here; the cluster's own components told apart by user agent), and with
    `with_client` this client's creates too."""
    found = []
    for line in (cluster.logs / "audit.log").read_text().splitlines():
        event = json.loads(line)
        agent = event.get("userAgent", "")
        if (
            event["user"]["username"] != OPERATOR_USER
            or agent.startswith(CLUSTER_AGENTS)
            or (agent == "" and not with_client)  # this client (devcluster's api(): no user agent)
            or event.get("responseStatus", {}).get("code", 200) >= 300
        ):
            continue
        when = datetime.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        found.append((when, ref.get("namespace", ""), ref.get("name", ""), f"{event['verb']} {resource}"))
    return found


def audited_writes(
    writes: list[Write], namespace: str, start: datetime.datetime, end: datetime.datetime
) -> collections.Counter[str]:
    """Writes in `namespace` between start and end, by verb and resource."""
    return collections.Counter(
        what for when, ns, _, what in writes if ns == namespace and start <= when <= end
    )


def owner(name: str, what: str) -> str:
    """The AgentToken a write in the renewal namespaces is for: tN itself (and its status), its
    Deployment tN, its Secret tN-tok, an Event about either (tN.<hex>, core.names.event_name)."""
    if what.endswith(" events"):
        return name.rsplit(".", 1)[0]
    return name.removesuffix("-tok") if what.endswith(" secrets") else name


def renewal_writes(
    writes: list[Write], namespace: str, start: datetime.datetime, renewals: int
) -> tuple[collections.Counter[str], int]:
    """The operator's writes for `renewals` whole renewals of each AgentToken in `namespace`,
    renewal by renewal: from its first Secret patch after `start` (a renewal) until its next
    `renewals`-th, the writes to its own objects. A renewal's follow-ups (the restart after
    the debounce, the status when the rollout completes, RolloutComplete) so count with it; one
    common time window for all would count those of a renewal just before its start and miss
    those of one just before its end (30 renewals once showed 35 Deployment patches)."""
    mine = sorted(w for w in writes if w[1] == namespace)
    renewed: dict[str, list[datetime.datetime]] = collections.defaultdict(list)
    for when, _, name, what in mine:
        if what == "patch secrets" and when >= start:
            renewed[owner(name, what)].append(when)
    counted: collections.Counter[str] = collections.Counter()
    done = 0
    for token, times in renewed.items():
        if len(times) <= renewals:
            continue  # not enough renewals seen for a whole window (the caller waits for them)
        first, last = times[0], times[renewals]
        counted.update(
            what for when, _, name, what in mine if owner(name, what) == token and first <= when < last
        )
        done += renewals
    return counted, done


def new_tokens(cluster: LocalCluster, count: int) -> tuple[datetime.datetime, datetime.datetime]:
    """Create `count` AgentTokens at once (8 threads); the window from the first create until
    all are Ready plus EVENT_WINDOW_S."""
    path = f"/apis/agenttoken.dev/v1alpha1/namespaces/{NEW_NS}/agenttokens"
    start = datetime.datetime.now(datetime.UTC)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: cluster.api("POST", path, token(f"n{i}", NEW_NS, False)), range(count)))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        _, raw = cluster.api("GET", path)
        ready = sum(
            1
            for i in json.loads(raw)["items"]
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (i.get("status") or {}).get("conditions") or []
            )
        )
        if ready >= count:
            time.sleep(EVENT_WINDOW_S)
            return start, datetime.datetime.now(datetime.UTC)
        time.sleep(0.5)
    raise TimeoutError("new AgentTokens not Ready")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=10)
    parser.add_argument("--renewals", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=100)
    parser.add_argument("--keep-audit", type=Path, help="copy the apiserver's audit log here")
    parser.add_argument(
        "--out", type=Path, help="write the results here, not to bench/results/api_economy.json"
    )
    parser.add_argument("--operator-log", type=Path, help="copy the operator's log here")
    parser.add_argument("--verbose", action="store_true", help="the operator logs at debug level")
    parser.add_argument(
        "--audit-status-bodies",
        action="store_true",
        help="audit AgentToken status writes with their request bodies (for --keep-audit)",
    )
    args = parser.parse_args()
    results = header(
        "api_economy", tokens_per_namespace=args.tokens, renewals=args.renewals, new_tokens=args.new_tokens
    )
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster", audit_status_bodies=args.audit_status_bodies)
        cluster.start()
        try:
            env = cluster.env()
            install(env, examples=False)
            for ns in (NEW_NS, *NAMESPACES):
                cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
            for ns, targets in NAMESPACES.items():
                if targets:
                    for i in range(args.tokens):
                        cluster.api("POST", f"/apis/apps/v1/namespaces/{ns}/deployments", deployment(f"t{i}"))
            op = start_operator(env, Path(tmp) / "operator.log", extra=("--verbose",) if args.verbose else ())
            try:
                new_start, new_end = new_tokens(cluster, args.new_tokens)
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
                # One renewal more than counted: it closes the last counted one's window.
                wait_revisions(cluster, {k: v + args.renewals + 1 for k, v in start_revisions.items()})
                window_end = datetime.datetime.now(datetime.UTC)
            finally:
                stop(op)
            if args.keep_audit:
                shutil.copy(cluster.logs / "audit.log", args.keep_audit)
            if args.operator_log:
                shutil.copy(Path(tmp) / "operator.log", args.operator_log)
            writes = {
                ns: renewal_writes(audited(cluster), ns, window_start, args.renewals) for ns in NAMESPACES
            }
            new_writes = audited_writes(audited(cluster, with_client=True), NEW_NS, new_start, new_end)
        finally:
            cluster.stop()
    new_total = sum(new_writes.values())
    events = sum(v for k, v in new_writes.items() if k.endswith(" events"))
    results["new_tokens"] = {
        "namespace": NEW_NS,
        "agenttokens": args.new_tokens,
        "window_s": round((new_end - new_start).total_seconds(), 1),
        "writes": dict(sorted(new_writes.items())),
        "writes_per_new_token": round((new_total - events) / args.new_tokens, 2),
        "events_per_new_token": round(events / args.new_tokens, 3),
        "writes_per_new_token_with_events": round(new_total / args.new_tokens, 2),
    }
    results["window_s"] = round((window_end - window_start).total_seconds(), 1)
    for ns, targets in NAMESPACES.items():
        counted, renewals = writes[ns]
        total = sum(counted.values())
        results["with_targets" if targets else "without_targets"] = {
            "namespace": ns,
            "agenttokens": args.tokens,
            "renewals": renewals,
            "operator_writes": dict(sorted(counted.items())),
            "writes_per_renewal": round(total / renewals, 2) if renewals else None,
        }
    results["goal_writes_per_renewal_without_targets"] = 3
    results["goal_writes_per_renewal_with_one_target"] = 6
    results["goal_writes_per_new_token"] = 3
    results["goals"] = {
        "without_targets_le_3": (results["without_targets"]["writes_per_renewal"] or 99) <= 3,
        "with_one_target_le_6": (results["with_targets"]["writes_per_renewal"] or 99) <= 6,
        "new_token_le_3": results["new_tokens"]["writes_per_new_token"] <= 3,
    }
    write("api_economy", results, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

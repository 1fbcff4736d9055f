"""Three operator processes with --shards 3 against one control plane: each shard Lease is held by
exactly one of them, AgentTokens in namespaces of every shard are minted and renewed, each replica
caches only its own shards' AgentTokens (`agenttoken_tokens_cached`; of the others it keeps names)
and Secrets (`agenttoken_secrets_cached`), and after kill -9 of one replica its shards are taken
over (read fresh by the survivors) and the renewals go on."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agenttoken import api
from agenttoken.core.lease import shard_of

from .conftest import render_chart
from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_ha import gauge

SHARDS = 3
PER_SHARD = 2  # namespaces
TOKEN_GAUGE = re.compile(r'^agenttoken_token_expiration_timestamp_seconds\{.*namespace="([^"]*)"')


def shard_rbac(kube: Kube, shards: int) -> None:
    """The chart's RBAC for `shards` shard Leases (plus member Leases when > 1)."""
    kube.apply(render_chart("--set", "crds.enabled=false", "--set", f"sharding.shards={shards}",
                            "--show-only", "templates/rbac.yaml"))  # fmt: skip


@pytest.fixture
def replicas(kube: Kube, operator: OperatorProcess, tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    # The session operator runs one shard: while it held Lease 0, replicas with another --shards
    # would hold nothing (core.lease.disagrees). It hands its Lease back on stop.
    operator.stop()
    shard_rbac(kube, SHARDS)
    procs = [
        OperatorProcess(
            kube,
            tmp_path / f"replica-{i}.log",
            extra_args=("--shards", str(SHARDS)),
            kubeconfig=operator.kubeconfig,
            extra_env=operator.extra_env,
        )
        for i in range(3)
    ]
    try:
        for proc in procs:
            proc.start(timeout=120)
        yield procs
    finally:
        for proc in procs:
            proc.stop()
            print(f"\nreplica log: {proc.log_path}")
        shard_rbac(kube, 1)  # back to the session's RBAC (later tests check it is no more)
        operator.start(timeout=120)  # waits out a dead replica's Lease 0 if it held it


def holders(kube: Kube) -> dict[int, str]:
    out = kube.kubectl(
        "get", "lease", "-n", "agenttoken-system", "-l", f"{api.GROUP}/lease=shard", "-o", "json"
    )
    found = {}
    for item in json.loads(out.stdout)["items"]:
        shard = int(item["metadata"]["name"].removeprefix("agenttoken-shard-"))
        found[shard] = str((item.get("spec") or {}).get("holderIdentity") or "")
    return found


def token_namespaces(proc: OperatorProcess) -> set[str]:
    """Namespaces of the AgentTokens this replica exports per-token metrics for (its own)."""
    return {m.group(1) for line in proc.metrics().splitlines() if (m := TOKEN_GAUGE.match(line))}


def namespaces_for_every_shard(kube: Kube) -> list[str]:
    picked: dict[int, list[str]] = {s: [] for s in range(SHARDS)}
    while any(len(names) < PER_SHARD for names in picked.values()):
        name = f"shard-{uuid.uuid4().hex[:6]}"
        if len(picked[shard_of(name, SHARDS)]) < PER_SHARD:
            picked[shard_of(name, SHARDS)].append(name)
    names = [n for group in picked.values() for n in group]
    for name in names:
        kube.kubectl("create", "namespace", name)
    return names


def short_lived(name: str) -> str:
    """60 s tokens (the CRD's minimum) renewed with 40 s left: every ~20 s."""
    spec = {"audience": ["https://api.example.com"], "ttl": "60s", "renewBeforePercentage": 67,
            "secret": {"name": f"{name}-token"}}  # fmt: skip
    return json.dumps({"apiVersion": f"{api.GROUP}/v1alpha1", "kind": "AgentToken", "metadata": {"name": name},
                       "spec": spec})  # fmt: skip


def revisions(kube: Kube, namespaces: list[str]) -> dict[tuple[str, str], int]:
    out = kube.kubectl("get", "agenttokens", "-A", "-o", "json")
    return {
        (item["metadata"]["namespace"], item["metadata"]["name"]): int(
            (item.get("status") or {}).get("revision") or 0
        )
        for item in json.loads(out.stdout)["items"]
        if item["metadata"]["namespace"] in namespaces
    }


def managed_secrets(kube: Kube, namespaces: list[str]) -> dict[str, int]:
    out = kube.kubectl(
        "get", "secrets", "-A", "-l", f"{api.LABEL_MANAGED_BY}={api.OPERATOR_NAME}", "-o", "json"
    )
    counts = dict.fromkeys(namespaces, 0)
    for item in json.loads(out.stdout)["items"]:
        counts[item["metadata"]["namespace"]] = counts.get(item["metadata"]["namespace"], 0) + 1
    return counts


def all_renewed(kube: Kube, namespaces: list[str], past: dict[tuple[str, str], int]) -> dict[Any, int] | None:
    now = revisions(kube, namespaces)
    return now if len(now) == len(past) and all(now[k] > past[k] for k in past) else None


def agenttokens_by_namespace(kube: Kube) -> dict[str, int]:
    """Every AgentToken of the cluster (other tests' too) by namespace."""
    counts: dict[str, int] = {}
    for item in json.loads(kube.kubectl("get", "agenttokens", "-A", "-o", "json").stdout)["items"]:
        counts[item["metadata"]["namespace"]] = counts.get(item["metadata"]["namespace"], 0) + 1
    return counts


def check_caches_only_its_shards(
    kube: Kube, procs: list[OperatorProcess], namespaces: list[str], tokens: int
) -> None:
    secrets = managed_secrets(kube, namespaces)
    owners = holders(kube)
    everywhere = agenttokens_by_namespace(kube)
    for proc in procs:
        mine = {ns for ns, count in secrets.items() if owners.get(shard_of(ns, SHARDS)) == proc.identity}
        served = token_namespaces(proc) & set(namespaces)
        assert served <= mine, (proc.identity, served - mine)
        cached = gauge(proc, "agenttoken_secrets_cached")
        assert cached <= sum(secrets[ns] for ns in mine), (proc.identity, cached)
        # Bodies of its own shards' AgentTokens only: ours in its namespaces at least, and at most
        # every AgentToken of its shards (others' tests' namespaces may still be going away).
        bodies = gauge(proc, "agenttoken_tokens_cached")
        in_its_shards = sum(
            n for ns, n in everywhere.items() if owners.get(shard_of(ns, SHARDS)) == proc.identity
        )
        assert sum(everywhere.get(ns, 0) for ns in mine) <= bodies <= in_its_shards, (proc.identity, bodies)
    served_all = [ns for proc in procs for ns in token_namespaces(proc) & set(namespaces)]
    assert len(served_all) == len(set(served_all)) == len(namespaces)  # each by exactly one
    assert sum(gauge(p, "agenttoken_secrets_cached") for p in procs) <= sum(secrets.values())
    assert sum(gauge(p, "agenttoken_tokens_cached") for p in procs) <= sum(everywhere.values())
    assert tokens <= sum(secrets[ns] for ns in namespaces)


def test_three_replicas_share_the_shards_and_take_over_a_killed_ones(
    kube: Kube, replicas: list[OperatorProcess]
) -> None:
    ids = {p.identity: p for p in replicas}

    def balanced() -> dict[int, str] | None:
        found = holders(kube)
        fair = len(found) == SHARDS and set(found.values()) == set(ids)
        return found if fair and all(gauge(p, "agenttoken_shards_held") == 1 for p in replicas) else None

    wait_for("each replica to hold exactly one shard", balanced, timeout=120, interval=1)
    namespaces = namespaces_for_every_shard(kube)
    try:
        for ns in namespaces:
            for i in range(2):
                kube.apply(short_lived(f"agent-{i}"), "-n", ns)
        count = 2 * len(namespaces)
        first = wait_for(
            "every AgentToken minted",
            lambda: all_renewed(
                kube,
                namespaces,
                dict.fromkeys(((ns, f"agent-{i}") for ns in namespaces for i in range(2)), 0),
            ),
            timeout=120,
            interval=1,
        )
        wait_for("every AgentToken renewed", lambda: all_renewed(kube, namespaces, first),
                           timeout=90, interval=1)  # fmt: skip
        check_caches_only_its_shards(kube, replicas, namespaces, count)

        victim = ids[holders(kube)[0]]  # the primary: shard 0 and its cluster-wide singletons move too
        survivors = [p for p in replicas if p is not victim]
        victim.kill9()
        killed = time.monotonic()
        wait_for(
            "the killed replica's shard served by a survivor",
            lambda: (
                set((h := holders(kube)).values()) <= {p.identity for p in survivors}
                and len(h) == SHARDS
                and sum(gauge(p, "agenttoken_shards_held") for p in survivors) == SHARDS
            ),
            timeout=60,
            interval=0.2,
        )
        print(f"\nsharded takeover: {time.monotonic() - killed:.1f}s after kill -9 of the primary")
        assert sum(gauge(p, "agenttoken_leader") for p in survivors) == 1
        taken = revisions(kube, namespaces)  # from here on only the survivors can renew
        wait_for("every AgentToken renewed after the takeover", lambda: all_renewed(kube, namespaces, taken),
                 timeout=120, interval=1)  # fmt: skip
        check_caches_only_its_shards(kube, survivors, namespaces, count)
    finally:
        for ns in namespaces:
            kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)

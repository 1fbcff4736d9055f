"""Two operator processes against one control plane: one leads (holds the shard Lease), the other
is a hot standby that is Ready and serves the same JWKS, and takes over when the leader dies."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_issuers import issuer, issuer_ready
from .test_lifecycle import agenttoken, status, wait_ready, wait_revision

LEASE = "agenttoken-shard-0"


def holder(kube: Kube) -> str | None:
    lease = kube.get_json("lease", LEASE, "-n", "agenttoken-system")
    return ((lease or {}).get("spec") or {}).get("holderIdentity")


def lease_spec(kube: Kube) -> dict[str, Any]:
    lease = kube.get_json("lease", LEASE, "-n", "agenttoken-system")
    assert lease is not None
    spec: dict[str, Any] = lease["spec"]
    return spec


def fetch(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return int(resp.status), resp.read()


def gauge(proc: OperatorProcess, name: str) -> float:
    for line in proc.metrics().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not exported")


@pytest.fixture
def standby(kube: Kube, operator: OperatorProcess, tmp_path: Path) -> Iterator[OperatorProcess]:
    """A second operator (its own identity) beside the session's; stopped (Lease released) after."""
    proc = OperatorProcess(kube, tmp_path / "standby.log", kubeconfig=operator.kubeconfig)
    proc.start()
    yield proc
    proc.stop()
    print(f"\nstandby log: {proc.log_path}")


def test_one_leads_the_standby_is_ready_serves_jwks_and_takes_over(
    kube: Kube, operator: OperatorProcess, standby: OperatorProcess, namespace: str
) -> None:
    wait_for("the session operator to hold the Lease", lambda: holder(kube) == operator.identity, timeout=60)
    assert gauge(operator, "agenttoken_leader") == 1
    assert gauge(standby, "agenttoken_leader") == 0
    assert gauge(standby, "agenttoken_shards_held") == 0
    # The standby is Ready and serves the same keys, read from the cluster.
    assert fetch(standby.base_url + "/healthz")[0] == 200
    assert standby.alive()
    leader_jwks = json.loads(fetch(operator.base_url + "/jwks.json")[1])
    assert leader_jwks["keys"]
    wait_for(
        "the standby to serve the leader's JWKS",
        lambda: json.loads(fetch(standby.base_url + "/jwks.json")[1]) == leader_jwks,
        timeout=30,
    )
    assert fetch(standby.base_url + "/.well-known/openid-configuration")[0] == 200
    assert fetch(standby.base_url + "/revocations.json")[0] == 200

    # Only the leader works: a new AgentToken is issued (once) by it.
    kube.apply(agenttoken("ha", "ha-token", ttl="1h"), "-n", namespace)
    wait_ready(kube, namespace, "ha")
    first = status(kube, namespace, "ha")
    assert first["revision"] == 1
    assert standby.reconciled() == 0
    transitions = lease_spec(kube).get("leaseTransitions") or 0

    # The leader dies: the standby takes the Lease after it expired (15 s), no sooner.
    operator.kill9()
    killed = time.monotonic()
    wait_for(
        "the standby to take the Lease", lambda: holder(kube) == standby.identity, timeout=40, interval=0.1
    )
    took = time.monotonic() - killed
    print(f"\nfailover: the standby led {took:.1f}s after kill -9 of the leader")
    assert took <= 20  # lease 15 s plus a quarter retry period; generous for a loaded machine
    assert lease_spec(kube)["leaseTransitions"] == transitions + 1
    assert gauge(standby, "agenttoken_leader") == 1
    # It works from its warm cache: a rotation is served by the new leader.
    kube.kubectl("annotate", "agenttoken", "ha", "-n", namespace, "agenttoken.dev/rotate=after-failover")
    second = wait_revision(kube, namespace, "ha", 2, timeout=60)
    assert second["tokenId"] != first["tokenId"]
    assert second["revision"] == 2  # minted once

    # The old leader comes back as a standby (its Lease was taken)...
    operator.start()
    deadline = time.monotonic() + 6  # three retry periods: it must not take the Lease back
    while time.monotonic() < deadline:
        assert holder(kube) == standby.identity
        time.sleep(0.5)
    assert gauge(operator, "agenttoken_leader") == 0
    # ...and when the standby stops cleanly it hands the Lease over at once (no expiry wait).
    standby.stop()
    stopped = time.monotonic()
    wait_for("the session operator to lead again", lambda: holder(kube) == operator.identity, timeout=30)
    assert time.monotonic() - stopped < 10


def test_a_new_leader_writes_the_status_of_issuers_changed_while_none_led(
    kube: Kube, operator: OperatorProcess, standby: OperatorProcess, namespace: str
) -> None:
    """The leader dies; issuers are created before the standby may take over. The standby sees
    them through its watches but writes nothing (not its shard yet), and the watch will not deliver
    them again: on taking the shard (and the primary's role) it writes their status itself."""
    wait_for("the session operator to hold the Lease", lambda: holder(kube) == operator.identity, timeout=60)
    cluster_wide = f"ha-failover-{namespace}"
    operator.kill9()
    try:
        kube.apply(issuer("TokenIssuer", "during-failover", {"builtin": {}}), "-n", namespace)
        kube.apply(issuer("ClusterTokenIssuer", cluster_wide, {"builtin": {}}))
        local = kube.get_json("tokenissuer", "during-failover", "-n", namespace) or {}
        if holder(kube) == operator.identity:  # nobody leads yet: nobody may have written it
            assert not local.get("status"), local.get("status")
        wait_for("the standby to take the Lease", lambda: holder(kube) == standby.identity, timeout=40)
        issuer_ready(kube, "TokenIssuer", "during-failover", namespace)
        issuer_ready(kube, "ClusterTokenIssuer", cluster_wide)
    finally:
        kube.kubectl("delete", "clustertokenissuer", cluster_wide, "--ignore-not-found", check=False)
        operator.start()  # back as the standby; the fixture's stop hands the Lease back to it

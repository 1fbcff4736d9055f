"""[measure] reliability 1: kill -9 of the operator at random moments during many renewals of
AgentTokens with restart targets. Afterwards every Secret holds a valid unexpired token, no
workload restarted more than once per token, nothing is stuck.

Files are numbered so the suite runs in a fixed order and the leak scan (test_9) runs last.
"""

from __future__ import annotations

import os
import random
import time

from devcluster import LocalCluster
from tests.e2e.kube import Kube, wait_for
from tests.e2e.operator import OperatorProcess
from tests.e2e.test_rollouts import KEY_PREFIX, workload

from .conftest import Size
from .support import (
    agenttokens,
    check_secret_holds_valid_token,
    condition,
    get,
    is_ready,
    jwks,
    new_namespace,
    short_lived,
    wait_all,
)

# Tokens use the minimum ttl, 60s (CRD); the renewal percentage is a size knob.
PER_NAMESPACE = 10  # stays within --max-rollouts-per-namespace's default of 5 running at once


def fleet_token(name: str, renew_percent: int = 75) -> str:
    rollout = {"targets": [{"kind": "Deployment", "name": name}], "revokeAfter": "5s"}
    return short_lived(name, renew_percent, rollout)


def renewals(cluster: LocalCluster, namespaces: list[str]) -> int:
    """Tokens issued beyond the first, from status.revision (survives operator restarts)."""
    return sum(
        max(0, int((o.get("status") or {}).get("revision") or 0) - 1)
        for ns in namespaces
        for o in agenttokens(cluster, ns)
    )


def rolled_out(obj: dict[str, object]) -> bool:
    st = obj.get("status") or {}
    assert isinstance(st, dict)
    ro = st.get("rollout") or {}
    return (
        is_ready(obj)  # type: ignore[arg-type]
        and not condition(obj, "Stalled")  # type: ignore[arg-type]
        and ro.get("state") == "Complete"
        and ro.get("tokenId") == st.get("tokenId")
    )


def test_kill9_at_random_moments_during_renewals(
    kube: Kube, cluster: LocalCluster, operator: OperatorProcess, size: Size
) -> None:
    count, wanted, kills = size("kill_tokens"), size("kill_renewals"), size("kill_count")
    renew_percent = size("kill_renew_percent")
    period_s = 60 * (1 - renew_percent / 100)
    # A test schedule, not cryptography (S311); the seed is printed so a run can be repeated.
    seed = int(os.environ.get("RELIABILITY_SEED") or random.randrange(1 << 30))  # noqa: S311
    rng = random.Random(seed)  # noqa: S311
    print(f"\nkill9: {count} tokens, >= {wanted} renewals, {kills} kills, seed {seed}")
    namespaces = [new_namespace(kube, "kill") for _ in range(-(-count // PER_NAMESPACE))]
    names: list[tuple[str, str]] = []
    for i in range(count):
        ns, name = namespaces[i % len(namespaces)], f"agent-{i}"
        kube.apply(workload("Deployment", name, f"{name}-token", replicas=1), "-n", ns)
        kube.apply(fleet_token(name, renew_percent), "-n", ns)
        names.append((ns, name))
    wait_all(cluster, namespaces, "every first token and its rollout", rolled_out, timeout=900)

    # Kill at random moments spread over the time the renewals should take (one renewal per
    # token every `period_s`), restarting at once; then let the renewals reach the target.
    start_renewals = renewals(cluster, namespaces)
    expected_s = wanted * period_s / count
    t0 = time.monotonic()
    moments = sorted(rng.uniform(0, expected_s) for _ in range(kills))
    for moment in moments:
        time.sleep(max(0.0, moment - (time.monotonic() - t0)))
        operator.kill9()
        operator.start(timeout=120)
    wait_for(
        f"{wanted} renewals",
        lambda: renewals(cluster, namespaces) - start_renewals >= wanted,
        timeout=expected_s * 3 + 120,
        interval=2,
    )
    done = renewals(cluster, namespaces) - start_renewals
    elapsed = time.monotonic() - t0

    # Quiesce: renew only at 95 % of the lifetime from now on (no new token, just a later
    # schedule), so the checks below see a settled fleet.
    for ns, name in names:
        kube.kubectl("patch", "agenttoken", name, "-n", ns, "--type=merge",
                     "-p", '{"spec":{"renewBeforePercentage":5}}')  # fmt: skip
    items = wait_all(cluster, namespaces, "every AgentToken Ready and rolled out", rolled_out, timeout=180)
    keys = jwks(cluster)
    restarts_total = 0
    for obj in items:
        meta, st = obj["metadata"], obj["status"]
        check_secret_holds_valid_token(cluster, keys, obj)
        dep = get(cluster, f"/apis/apps/v1/namespaces/{meta['namespace']}/deployments/{meta['name']}")
        # A Deployment's revision goes up by one per new pod template: 1 + restarts.
        restarts = int(dep["metadata"]["annotations"]["deployment.kubernetes.io/revision"]) - 1
        restarts_total += restarts
        where = f"{meta['namespace']}/{meta['name']}"
        assert 1 <= restarts <= st["revision"], f"{where}: {restarts} restarts for {st['revision']} tokens"
        template = dep["spec"]["template"]["metadata"]["annotations"]
        assert template[KEY_PREFIX + meta["name"]] == st["tokenId"], f"{where}: pods not on the current token"
    assert operator.alive()
    print(
        f"kill9: {done} renewals in {elapsed:.0f}s with {kills} kill -9; "
        f"{restarts_total} restarts for {sum(o['status']['revision'] for o in items)} tokens"
    )


def test_renewals_arriving_during_a_rollout_get_their_own_restart(
    kube: Kube, cluster: LocalCluster, operator: OperatorProcess
) -> None:
    """A new token for a workload whose rollout is still running waits for that rollout, then
    restarts it again; it never wedges the workload's restart slot (what the kill -9 run at full
    size first showed: every workload 'waiting for its restart slot' for good)."""
    ns = new_namespace(kube, "overlap")
    kube.apply(workload("Deployment", "busy", "busy-token", replicas=3), "-n", ns)
    kube.apply(fleet_token("busy"), "-n", ns)
    wait_all(cluster, [ns], "the first rollout", rolled_out, timeout=120)
    for i in range(3):
        # Rotations ~3 s apart: past the debounce, inside a 3-replica rollout.
        kube.kubectl("annotate", "agenttoken", "busy", "-n", ns, f"agenttoken.dev/rotate=r{i}", "--overwrite")
        time.sleep(3)  # spacing between the rotations is the scenario, not a wait for a condition
    items = wait_all(
        cluster,
        [ns],
        "the last token rolled out",
        lambda o: rolled_out(o) and o["status"].get("lastHandledRotateRequest") == "r2",
        timeout=180,
    )
    dep = get(cluster, f"/apis/apps/v1/namespaces/{ns}/deployments/busy")
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert annotations[KEY_PREFIX + "busy"] == items[0]["status"]["tokenId"]

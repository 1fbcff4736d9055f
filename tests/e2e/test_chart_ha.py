"""The chart's high-availability shape, from `helm template` alone (no cluster): replicas with leader
election on named Leases, a rolling update that never empties the Service, a PodDisruptionBudget,
spreading that still schedules on one node, and the values that would render a broken setup
refused when rendering. The apiserver validates the same renderings in test_ship.py."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest
import yaml

from .conftest import REPO, helm_path, render_chart

CHART = REPO / "charts" / "agent-token-operator"
SELECTOR = {
    "app.kubernetes.io/name": "agent-token-operator",
    "app.kubernetes.io/instance": "agent-token-operator",
}


def objects(*values: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> object of the chart rendered with `--set` values."""
    args = [arg for value in values for arg in ("--set", value)]
    docs = [d for d in yaml.safe_load_all(render_chart("--set", "crds.enabled=false", *args)) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def deployment(rendered: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return rendered[("Deployment", "agent-token-operator")]


def container(rendered: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (only,) = deployment(rendered)["spec"]["template"]["spec"]["containers"]
    return dict(only)


def refusal(*values: str) -> str:
    """helm template's error for values that must not render."""
    args = [arg for value in values for arg in ("--set", value)]
    result = subprocess.run(
        [helm_path(), "template", "x", str(CHART), "--kube-version", "1.37.1", *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0, f"{values} rendered"
    return result.stderr


def test_defaults_run_two_replicas_that_elect_a_leader() -> None:
    rendered = objects()
    spec = deployment(rendered)["spec"]
    assert spec["replicas"] == 2
    # A new pod is Ready before an old one goes: the Service never empties during an upgrade.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    args = container(rendered)["args"]
    assert {"--shards=1", "--lease-duration=15", "--renew-deadline=10", "--retry-period=2"} <= set(args)
    assert "--no-leader-elect" not in args, "tests/dev only: replicas would all act"
    env = {e["name"]: e for e in container(rendered)["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_pod_disruption_budget_only_with_more_than_one_replica() -> None:
    pdb = objects()[("PodDisruptionBudget", "agent-token-operator")]
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == SELECTOR
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    # One replica: a budget of one pod would block every node drain.
    assert not [key for key in objects("replicaCount=1") if key[0] == "PodDisruptionBudget"]
    assert not [
        key for key in objects("podDisruptionBudget.enabled=false") if key[0] == "PodDisruptionBudget"
    ]
    assert (
        objects("replicaCount=3", "podDisruptionBudget.minAvailable=2")[
            ("PodDisruptionBudget", "agent-token-operator")
        ]["spec"]["minAvailable"]
        == 2
    )


def test_replicas_spread_but_still_schedule_on_one_node() -> None:
    pod = deployment(objects())["spec"]["template"]["spec"]
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == SELECTOR
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"]["podAntiAffinity"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"] == SELECTOR
    # Only the pods of one revision count: a rolling update's surge pod does not skew the spread.
    assert spread["matchLabelKeys"] == ["pod-template-hash"]

    required = deployment(objects("podAntiAffinity=required"))["spec"]["template"]["spec"]["affinity"]
    (hard,) = required["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert hard["topologyKey"] == "kubernetes.io/hostname"
    assert "affinity" not in deployment(objects("podAntiAffinity=none"))["spec"]["template"]["spec"]
    # A user's own affinity replaces the default.
    own = deployment(objects("affinity.nodeAffinity.x=1"))["spec"]["template"]["spec"]["affinity"]
    assert own == {"nodeAffinity": {"x": 1}}


def test_lease_rbac_is_its_namespace_and_its_shards_only() -> None:
    role = objects()[("Role", "agent-token-operator-leases")]
    assert role["metadata"]["namespace"] == "agenttoken-system"
    leases = [rule for rule in role["rules"] if rule["resources"] == ["leases"]]
    create, named = leases
    assert create == {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}
    assert named["resourceNames"] == ["agenttoken-shard-0"]
    assert sorted(named["verbs"]) == ["get", "update", "watch"]
    # The LeaseAcquired/LeaseLost Events, in its own namespace (namespaced mode has no Role there).
    assert {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]} in role["rules"]

    rendered = objects("sharding.shards=3")
    role = rendered[("Role", "agent-token-operator-leases")]
    create, named, members = [rule for rule in role["rules"] if rule["resources"] == ["leases"]]
    assert named["resourceNames"] == ["agenttoken-shard-0", "agenttoken-shard-1", "agenttoken-shard-2"]
    # Member Leases are named after pod names: listable and writable in this namespace only.
    assert "resourceNames" not in members
    assert sorted(members["verbs"]) == ["delete", "get", "list", "update", "watch"]
    binding = rendered[("RoleBinding", "agent-token-operator-leases")]
    assert binding["metadata"]["namespace"] == "agenttoken-system"
    assert binding["roleRef"]["name"] == "agent-token-operator-leases"
    assert "--shards=3" in container(rendered)["args"]
    # No other Role or any ClusterRole mentions Leases.
    for (kind, name), obj in rendered.items():
        if kind in ("ClusterRole", "Role") and name != "agent-token-operator-leases":
            assert all("leases" not in rule.get("resources", []) for rule in obj["rules"]), name


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["leaderElection.renewDeadline=15"], "leaseDuration must exceed leaderElection.renewDeadline"),
        (["leaderElection.retryPeriod=9"], "renewDeadline must exceed 1.2 * leaderElection.retryPeriod"),
        (["podDisruptionBudget.minAvailable=2"], "minAvailable must be below replicaCount"),
        (["sharding.shards=0"], "values don't meet the specifications of the schema"),
        (["podAntiAffinity=sometimes"], "values don't meet the specifications of the schema"),
        (["leaderElection.leaseDuration=0"], "values don't meet the specifications of the schema"),
        (["topologySpreadConstraints[0].whenUnsatisfiable=Never"], "values don't meet the specifications"),
    ],
)
def test_values_that_would_not_work_are_refused(values: list[str], message: str) -> None:
    assert message in refusal(*values)

"""The Helm chart on a real control plane: lint, render, schema, install/upgrade/uninstall,
least-privilege RBAC (the session's operator already runs as the chart's ServiceAccount), and
GitOps friendliness (re-applying user manifests shows no diff)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

from devcluster import Binaries

from .conftest import REPO, helm_path, render_chart
from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import status, wait_ready
from .test_rollouts import token_with_rollout, wait_rolled, workload

CHART = REPO / "charts" / "agent-token-operator"
SA = "system:serviceaccount:agenttoken-system:agent-token-operator"


def helm(kube: Kube, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm_path(), *args], env=kube.env, capture_output=True, text=True, check=False, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


def can_i(kube: Kube, who: str, *args: str) -> bool:
    out = kube.kubectl("auth", "can-i", f"--as={who}", *args, check=False)
    return out.stdout.strip() == "yes"


def test_helm_lint_is_clean(kube: Kube) -> None:
    result = helm(kube, "lint", "--strict", str(CHART))
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout
    assert "[ERROR]" not in result.stdout


def test_rendered_chart_validates_against_the_apiserver(kube: Kube, crds: Path, namespace: str) -> None:
    for values in (
        [],
        ["--set", f"watchNamespaces={{{namespace},default}}"],
        ["--set", "networkPolicy.enabled=true"],
        # HA variants: the PodDisruptionBudget and the Lease Role with several shards, one replica.
        ["--set", "replicaCount=3", "--set", "sharding.shards=4", "--set", "podAntiAffinity=required"],
        ["--set", "replicaCount=1", "--set", "strategy=Recreate"],
    ):
        rendered = render_chart(*values)
        result = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=rendered, check=False)
        assert result.returncode == 0, result.stderr
        assert "deployment.apps/agent-token-operator created (server dry run)" in result.stdout


def test_values_schema_rejects_a_misspelt_value(kube: Kube) -> None:
    for bad in ("operatr.keyAlgorithm=ES256", "operator.keyAlgoritm=ES256", "replicaCount=-1"):
        result = helm(
            kube, "template", "x", str(CHART), "--kube-version", "1.37.1", "--set", bad, check=False
        )
        assert result.returncode != 0, bad
        assert "values don't meet the specifications of the schema" in result.stderr


def test_install_upgrade_uninstall(kube: Kube, crds: Path) -> None:
    release = f"ato-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", release)
    kube.wait_default_sa(release)
    try:
        helm(
            kube,
            "install",
            release,
            str(CHART),
            "-n",
            release,
            "--set",
            "crds.enabled=false",
            "--wait",
            "--timeout",
            "120s",
        )
        deployment = f"{release}-agent-token-operator"
        kube.kubectl("rollout", "status", f"deployment/{deployment}", "-n", release, "--timeout=60s")
        dep = kube.get_json("deployment", deployment, "-n", release)
        assert dep is not None
        pod = dep["spec"]["template"]["spec"]
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
        assert dep["spec"]["replicas"] == 2
        assert kube.get_json("poddisruptionbudget", deployment, "-n", release) is not None
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"]
        generation = dep["metadata"]["generation"]
        helm(
            kube,
            "upgrade",
            release,
            str(CHART),
            "-n",
            release,
            "--reuse-values",
            "--set",
            "operator.keyAlgorithm=EdDSA",
            "--wait",
            "--timeout",
            "120s",
        )
        upgraded = kube.get_json("deployment", deployment, "-n", release)
        assert upgraded is not None
        assert upgraded["metadata"]["generation"] > generation
        assert "--key-algorithm=EdDSA" in upgraded["spec"]["template"]["spec"]["containers"][0]["args"]
        kube.kubectl("rollout", "status", f"deployment/{deployment}", "-n", release, "--timeout=60s")
        helm(kube, "uninstall", release, "-n", release, "--wait")
        assert kube.get_json("deployment", deployment, "-n", release) is None
        assert kube.get_json("clusterrole", deployment) is None
    finally:
        helm(kube, "uninstall", release, "-n", release, check=False)
        kube.kubectl("delete", "namespace", release, "--wait=false", check=False)


def test_operator_identity_is_least_privilege(kube: Kube, operator: OperatorProcess) -> None:
    """The session's operator runs as this identity and every e2e flow passes with it; here the
    negative side: what it must not be able to do."""
    assert can_i(kube, SA, "patch", "agenttokens/status", "-n", "default")
    assert can_i(kube, SA, "create", "secrets", "-n", "default")
    assert not can_i(kube, SA, "create", "rolebindings", "-n", "default")
    assert not can_i(kube, SA, "create", "clusterrolebindings")
    assert not can_i(kube, SA, "delete", "secrets", "-n", "default")
    assert not can_i(kube, SA, "update", "deployments", "-n", "default")
    assert not can_i(kube, SA, "delete", "deployments", "-n", "default")
    assert not can_i(kube, SA, "create", "pods", "-n", "default")
    # Pods: listed to confirm a token is unused before a step; watched and read (no more than
    # list already shows) so a deleted pod's per-pod tokens are revoked (delivery PerPod). Never written.
    assert can_i(kube, SA, "list", "pods", "-n", "default")
    assert can_i(kube, SA, "watch", "pods", "-n", "default")
    assert not can_i(kube, SA, "patch", "pods", "-n", "default")
    assert not can_i(kube, SA, "delete", "pods", "-n", "default")
    # The token endpoint checks pods' ServiceAccount tokens with TokenReviews.
    assert can_i(kube, SA, "create", "tokenreviews.authentication.k8s.io")
    assert can_i(kube, SA, "list", "cronjobs.batch", "-n", "default")
    assert not can_i(kube, SA, "update", "agenttokens", "-n", "default")
    assert not can_i(kube, SA, "create", "agenttokens", "-n", "default")
    # In its own namespace only the named key Secret and ConfigMaps are writable.
    assert can_i(kube, SA, "update", "secrets/agenttoken-signing-keys", "-n", "agenttoken-system")
    assert not can_i(kube, SA, "update", "secrets/something-else", "-n", "agenttoken-system")
    assert not can_i(kube, SA, "update", "configmaps/something-else", "-n", "agenttoken-system")
    # Leader election: its shards' Leases in its own namespace, nothing else.
    lease, ns = "leases.coordination.k8s.io", "agenttoken-system"
    assert can_i(kube, SA, "create", lease, "-n", ns)
    assert can_i(kube, SA, "get", f"{lease}/agenttoken-shard-0", "-n", ns)
    assert can_i(kube, SA, "update", f"{lease}/agenttoken-shard-0", "-n", ns)
    assert can_i(kube, SA, "watch", f"{lease}/agenttoken-shard-0", "-n", ns)
    assert not can_i(kube, SA, "update", f"{lease}/agenttoken-shard-1", "-n", ns)
    assert not can_i(kube, SA, "update", f"{lease}/kube-scheduler", "-n", ns)
    assert not can_i(kube, SA, "delete", f"{lease}/agenttoken-shard-0", "-n", ns)
    assert not can_i(kube, SA, "list", lease, "-n", ns)
    assert not can_i(kube, SA, "create", lease, "-n", "default")
    assert not can_i(kube, SA, "update", f"{lease}/kube-controller-manager", "-n", "kube-system")


def test_namespaced_mode_cannot_reach_other_namespaces(kube: Kube, crds: Path, namespace: str) -> None:
    release = f"nsmode{uuid.uuid4().hex[:4]}"
    rendered = subprocess.run(
        [helm_path(), "template", release, str(CHART), "-n", "agenttoken-system", "--kube-version", "1.37.1",
         "--set", "crds.enabled=false", "--set", f"watchNamespaces={{{namespace}}}",
         "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    kube.apply(rendered)
    who = f"system:serviceaccount:agenttoken-system:{release}-agent-token-operator"
    try:
        assert can_i(kube, who, "get", "secrets", "-n", namespace)
        assert can_i(kube, who, "patch", "deployments", "-n", namespace)
        assert not can_i(kube, who, "get", "secrets", "-n", "default")
        assert not can_i(kube, who, "list", "secrets", "--all-namespaces")
        assert not can_i(kube, who, "patch", "deployments", "-n", "default")
        assert not can_i(kube, who, "list", "agenttokens", "--all-namespaces")
    finally:
        kube.kubectl("delete", "-f", "-", input=rendered, check=False)


def test_reapplying_user_manifests_shows_no_diff(
    kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    """The operator writes only status, its own Secrets, a finalizer and the one restart annotation:
    GitOps tools re-applying the user's manifests find nothing to change, with client-side apply
    (Argo CD's default) and with server-side apply (Flux, Argo CD's ServerSideApply)."""
    for mode in ("client", "server"):
        name = f"gitops-{mode}"
        token = tmp_path / f"{name}-token.yaml"
        token.write_text(
            token_with_rollout(name, f"{name}-token", {"targets": [{"kind": "Deployment", "name": name}]})
        )
        dep = tmp_path / f"{name}-deployment.yaml"
        dep.write_text(workload("Deployment", name, f"{name}-token", replicas=1))
        flags = ["--server-side"] if mode == "server" else []
        for manifest in (dep, token):
            kube.kubectl("apply", *flags, "-n", namespace, "-f", str(manifest))
        wait_ready(kube, namespace, name)
        wait_rolled(kube, namespace, name)
        kube.kubectl("annotate", "agenttoken", name, "-n", namespace, "agenttoken.dev/rotate=again")
        wait_for(
            "the rotation", lambda name=name: status(kube, namespace, name).get("revision") == 2, timeout=30
        )
        wait_rolled(kube, namespace, name)
        for manifest in (dep, token):
            diff = kube.kubectl("diff", *flags, "-n", namespace, "-f", str(manifest), check=False)
            assert diff.returncode == 0, f"{mode}-side apply: {diff.stdout}"
        obj = kube.get_json("agenttoken", name, "-n", namespace)
        assert obj is not None
        assert not [k for k in obj["metadata"].get("annotations", {}) if k.startswith("kopf.zalando.org")]
        assert json.dumps(obj["metadata"].get("finalizers")) == '["agenttoken.dev/revoke-on-delete"]'


def kstatus(kube: Kube, namespace: str, name: str) -> str:
    """The verdict of the upstream kstatus library (built from Go modules by make cluster-bins)."""
    obj = kube.get_json("agenttoken", name, "-n", namespace)
    result = subprocess.run(
        [str(Binaries.from_cache().kstatus)],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        check=True,
    )
    verdict: str = json.loads(result.stdout)["status"]
    return verdict


def test_kstatus_reads_our_conditions(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    # minReadySeconds keeps the rollout in progress long enough to observe it.
    body = json.loads(workload("Deployment", "slow", "slow-token", replicas=1))
    body["spec"]["minReadySeconds"] = 15
    kube.apply(json.dumps(body), "-n", namespace)
    kube.kubectl("rollout", "status", "deployment/slow", "-n", namespace, "--timeout=60s")
    kube.apply(
        token_with_rollout("slow", "slow-token", {"targets": [{"kind": "Deployment", "name": "slow"}]}),
        "-n",
        namespace,
    )
    wait_for(
        "the rollout to be in progress",
        lambda: (status(kube, namespace, "slow").get("rollout") or {}).get("state") == "RollingOut",
        timeout=30,
    )
    assert kstatus(kube, namespace, "slow") == "InProgress"
    wait_rolled(kube, namespace, "slow", timeout=90)
    assert kstatus(kube, namespace, "slow") == "Current"


def test_monitoring_objects_render(kube: Kube) -> None:
    """ServiceMonitor and PrometheusRule (their CRDs are not in our cluster: rendered and parsed)."""
    import yaml

    rendered = render_chart(
        "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.prometheusRule.enabled=true"
    )
    docs = {d["kind"]: d for d in yaml.safe_load_all(rendered) if d}
    assert docs["ServiceMonitor"]["spec"]["endpoints"][0]["path"] == "/metrics"
    alerts = {r["alert"]: r for r in docs["PrometheusRule"]["spec"]["groups"][0]["rules"]}
    assert set(alerts) >= {"AgentTokenExpiringSoon", "AgentTokenRenewalsFailing", "AgentTokenIssuerFailing"}
    assert "agenttoken_token_expiration_timestamp_seconds" in alerts["AgentTokenExpiringSoon"]["expr"]
    assert "{{ $labels.name }}" in alerts["AgentTokenExpiringSoon"]["annotations"]["summary"]


def test_prometheus_rule_labels_stay_metadata_labels() -> None:
    """metrics.prometheusRule.labels go to the object's labels and nowhere else (a template edit
    once rendered the alert rules into metadata.labels when labels were set)."""
    import yaml

    rendered = render_chart(
        "--set", "metrics.prometheusRule.enabled=true", "--set", "metrics.prometheusRule.labels.release=kps"
    )
    (rule,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PrometheusRule"]
    labels = rule["metadata"]["labels"]
    assert labels["release"] == "kps"
    assert all(isinstance(v, str) for v in labels.values())
    alerts = {r["alert"] for r in rule["spec"]["groups"][0]["rules"]}
    assert {"AgentTokenExpiringSoon", "AgentTokenRevocationListStale"} <= alerts

"""The e2e tier: a session-scoped cluster (real processes, never a mocked API server)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from devcluster import Binaries, LocalCluster, install_finalizer_policy, kubeconfig_reachable, read_versions

from .kube import Kube, wait_for
from .operator import OperatorProcess

pytestmark = pytest.mark.e2e


def _docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False, timeout=20).returncode == 0


@pytest.fixture(scope="session")
def kube(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    mode = request.config.getoption("--cluster")
    if mode == "existing":
        path = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")))
        if not kubeconfig_reachable():
            pytest.fail(f"--cluster=existing: KUBECONFIG {path} does not reach a cluster")
        yield Kube(path, name="existing")
        return
    if mode == "kind":
        if not _docker_available():
            pytest.skip("--cluster=kind needs a Docker engine (`docker info` failed); use --cluster=local")
        from pytest_kind import KindCluster  # type: ignore[import-untyped]

        kind = KindCluster(f"agenttoken-{uuid.uuid4().hex[:6]}")
        kind.create()
        try:
            yield Kube(Path(kind.kubeconfig_path), name="kind")
        finally:
            kind.delete()
        return
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"))
    cluster.start()
    print(f"\nlocal control plane ready in {cluster.started_in:.1f}s ({cluster.server})")
    try:
        yield Kube(cluster.kubeconfig, name="local")
    finally:
        cluster.stop(remove=False)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards without waiting."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    kube.kubectl("create", "namespace", name)
    kube.wait_default_sa(name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crds(kube: Kube) -> Path:
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
    if kube.get_json("namespace", "agenttoken-system") is None:
        kube.kubectl("create", "namespace", "agenttoken-system")
    kube.kubectl("apply", "-f", str(REPO / "examples" / "clustertokenissuer-builtin.yaml"))
    # The chart's admission policy (ValidatingAdmissionPolicy): issuer policy checked by the apiserver.
    kube.apply(render_chart("--show-only", "templates/admission-policy.yaml"))
    _wait_admission_policy_effective(kube)
    # The chart's MutatingAdmissionPolicy: new AgentTokens carry the revoke-on-delete finalizer
    # from their creation (the operator adds it only where the policy did not).
    install_finalizer_policy(kube.env)
    return REPO / "crds"


def _wait_admission_policy_effective(kube: Kube) -> None:
    """The apiserver resolves the policies' paramKind (our issuer CRDs) a moment after they are
    established; until then the policies cannot be evaluated (and, failurePolicy Ignore, allow).
    Tests that expect a refusal at admission need them in force: probe with server-side dry runs
    against a throwaway issuer whose policy allows one scope, then delete it."""
    issuer = {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "ClusterTokenIssuer",
        "metadata": {"name": "admission-probe"},
        "spec": {"builtin": {}, "policy": {"allowedScopes": ["probe:allowed"]}},
    }
    probe = {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": "admission-probe", "namespace": "default"},
        "spec": {
            "issuerRef": {"kind": "ClusterTokenIssuer", "name": "admission-probe"},
            "audience": ["probe"],
            "scopes": ["probe:refused"],
            "ttl": "1h",
            "secret": {"name": "admission-probe"},
        },
    }
    kube.apply(json.dumps(issuer))

    def refused() -> bool:
        result = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(probe), check=False)
        return result.returncode != 0 and "probe:refused" in result.stderr

    try:
        wait_for("the admission policy to be in force", refused, timeout=90)
    finally:
        kube.kubectl("delete", "clustertokenissuer", "admission-probe", "--wait=false", check=False)


def helm_path() -> str:
    bins = Binaries.from_cache()
    if bins.helm.exists():
        return str(bins.helm)
    found = shutil.which("helm")
    if not found:
        pytest.fail("helm not found: run `make cluster-bins`")
    return found


def render_chart(*args: str) -> str:
    version = read_versions()["KUBERNETES_VERSION"].lstrip("v")
    result = subprocess.run(
        [helm_path(), "template", "agent-token-operator", str(REPO / "charts" / "agent-token-operator"),
         "--namespace", "agenttoken-system", "--kube-version", version, *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def service_account_kubeconfig(kube: Kube, namespace: str, name: str, path: Path) -> Path:
    """A kubeconfig holding a real token of the ServiceAccount: the operator runs with exactly
    the chart's RBAC, so every e2e flow proves those permissions are enough."""
    token = kube.kubectl("create", "token", name, "-n", namespace, "--duration=6h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])["context"]
    cluster = next(c for c in admin["clusters"] if c["name"] == context["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": cluster["name"], "user": name}}],
        "current-context": name,
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="session")
def operator_identity(kube: Kube, crds: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart's ServiceAccount and RBAC (cluster-wide mode), applied from `helm template`."""
    rbac = render_chart("--set", "crds.enabled=false", "--show-only", "templates/serviceaccount.yaml",
                        "--show-only", "templates/rbac.yaml")  # fmt: skip
    kube.apply(rbac)
    return service_account_kubeconfig(
        kube, "agenttoken-system", "agent-token-operator", tmp_path_factory.mktemp("sa") / "kubeconfig"
    )


@pytest.fixture(scope="session")
def operator(
    kube: Kube, crds: Path, operator_identity: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the session, as the chart's ServiceAccount; tests that kill it restart it."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    # A short usage warm-up, so the unused-token tests (seconds-long periods) need not wait 30 s.
    proc = OperatorProcess(
        kube, log_path, kubeconfig=operator_identity, extra_env={"AGENTTOKEN_USAGE_WARMUP": "3"}
    )
    proc.start()
    yield proc
    proc.stop()
    print(f"\noperator log: {log_path}")

"""The e2e tier: a session-scoped cluster (real processes, never a mocked API server)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agenttoken.devcluster import LocalCluster, kubeconfig_reachable

from .kube import Kube
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
    return REPO / "crds"


@pytest.fixture(scope="session")
def operator(kube: Kube, crds: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """One operator for the session; tests that kill it start it again before they finish."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(kube, log_path)
    proc.start()
    yield proc
    proc.stop()
    print(f"\noperator log: {log_path}")

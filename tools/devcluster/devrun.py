"""`make run`: the operator against the configured cluster, or against a local control plane."""

from __future__ import annotations

import os
import subprocess
import sys

from .binaries import REPO_ROOT, ClusterError, kubectl_path
from .cluster import DEFAULT_DIR, LocalCluster


def kubeconfig_reachable(env: dict[str, str] | None = None, timeout: float = 5.0) -> bool:
    """Whether the current KUBECONFIG (or ~/.kube/config) reaches a cluster."""
    try:
        result = subprocess.run(
            [kubectl_path(), "get", "--raw", "/readyz", f"--request-timeout={int(timeout)}s"],
            env=env,
            capture_output=True,
            timeout=timeout + 5,
            check=False,
        )
    except (subprocess.TimeoutExpired, ClusterError):
        return False
    return result.returncode == 0


OPERATOR_NAMESPACE = "agenttoken-system"


def install(env: dict[str, str], *, examples: bool) -> None:
    """Install the CRDs (and the examples) into the cluster `env` points at."""
    kubectl = kubectl_path()

    def run(*args: str) -> None:
        subprocess.run([kubectl, *args], env=env, check=True)

    run("apply", "--server-side", "--force-conflicts", "-f", str(REPO_ROOT / "crds"))
    run("wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO_ROOT / "crds"))
    ns = subprocess.run(
        [kubectl, "get", "namespace", OPERATOR_NAMESPACE], env=env, capture_output=True, check=False
    )
    if ns.returncode != 0:
        run("create", "namespace", OPERATOR_NAMESPACE)
    # The default issuer, so AgentTokens that name none get tokens (the chart installs it too).
    run("apply", "-f", str(REPO_ROOT / "examples" / "clustertokenissuer-builtin.yaml"))
    if examples:
        run("apply", "-n", "default", "-f", str(REPO_ROOT / "examples"))


def dev_run() -> int:
    """`make run`: use the configured cluster if it answers, else start the local one."""
    if kubeconfig_reachable():
        print("using the cluster of the current KUBECONFIG")
        env = dict(os.environ)
        install(env, examples=False)
    else:
        cluster = LocalCluster(DEFAULT_DIR)
        if cluster.load():
            print(f"reusing the local control plane in {DEFAULT_DIR}")
        else:
            print("no cluster configured: starting the local control plane (first run builds it: 20-40 min)")
            cluster.start()
            print(f"local control plane ready in {cluster.started_in:.1f}s")
        env = cluster.env()
        install(env, examples=True)
        print(
            "\nLook at it from another shell:\n"
            f"  KUBECONFIG={cluster.kubeconfig} kubectl get agenttokens -A\n"
            f"Stop the control plane afterwards with: make cluster-down\n"
        )
    # One operator per dev cluster: a stable identity lets a restarted `make run` take its Lease
    # back at once instead of waiting for the previous process's Lease to expire (15 s).
    argv = [sys.executable, "-m", "agenttoken", "run", "--log-format", "plain", "--identity", "make-run"]
    os.execve(sys.executable, argv, {**env, "PYTHONUNBUFFERED": "1"})

"""`make run`: the operator against the configured cluster, or against a local control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from .binaries import REPO_ROOT, Binaries, ClusterError, kubectl_path, read_versions
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
    install_finalizer_policy(env)
    if examples:
        run("apply", "-n", "default", "-f", str(REPO_ROOT / "examples"))


CHART = REPO_ROOT / "charts" / "agent-token-operator"
FINALIZER = "agenttoken.dev/revoke-on-delete"


def render_chart(*args: str) -> str:
    """`helm template` of our chart (helm from the binaries cache, else PATH)."""
    helm = Binaries.from_cache().helm
    version = read_versions()["KUBERNETES_VERSION"].lstrip("v")
    result = subprocess.run(
        [str(helm) if helm.exists() else "helm", "template", "agent-token-operator", str(CHART),
         "--namespace", OPERATOR_NAMESPACE, "--kube-version", version, *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    if result.returncode:
        raise ClusterError(f"helm template failed: {result.stderr.strip()}")
    return result.stdout


def install_finalizer_policy(env: dict[str, str] | None = None, timeout: float = 60.0) -> None:
    """The chart's MutatingAdmissionPolicy that sets the revoke-on-delete finalizer at creation,
    applied and waited for: the apiserver loads a new policy a moment after it is stored, and
    until then AgentTokens are admitted without it (the operator then adds it: one write more)."""
    kubectl = kubectl_path()
    manifest = render_chart("--show-only", "templates/finalizer-policy.yaml")
    subprocess.run([kubectl, "apply", "-f", "-"], input=manifest, text=True, env=env, check=True,
                   capture_output=True)  # fmt: skip
    probe = json.dumps(
        {
            "apiVersion": "agenttoken.dev/v1alpha1",
            "kind": "AgentToken",
            "metadata": {"name": "finalizer-policy-probe", "namespace": "default"},
            "spec": {"audience": ["probe"], "ttl": "1h", "secret": {"name": "finalizer-policy-probe"}},
        }
    )
    deadline = time.monotonic() + timeout
    while True:
        result = subprocess.run(
            [kubectl, "create", "--dry-run=server", "-o", "jsonpath={.metadata.finalizers}", "-f", "-"],
            input=probe, text=True, env=env, capture_output=True, check=False,
        )  # fmt: skip
        if FINALIZER in result.stdout:
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"the finalizer policy is not in force after {timeout:.0f}s: {result.stderr}")
        time.sleep(0.5)


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

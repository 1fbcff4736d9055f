"""Connecting the adapter as a user's tools do (the CLI), rather than as the operator does.

`Kube.connect` (the operator) tries the pod's ServiceAccount first; a person at a terminal has a
kubeconfig, so this tries it first and falls back to the ServiceAccount (the CLI run in a pod).
"""

from __future__ import annotations

import os

from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

from agenttoken.kube.adapter import Kube


class KubeConfigError(RuntimeError):
    """No usable cluster configuration: no kubeconfig that loads, and not in a pod either."""


async def connect_kubeconfig(context: str | None = None) -> tuple[Kube, str]:
    """The adapter for the kubeconfig's cluster, and the context's namespace ("default" if unset).

    Like kubectl: the files in KUBECONFIG (several, ':'-separated, merged) or ~/.kube/config,
    its current context unless `context` is given, any auth it names (client certificates,
    tokens, exec plugins such as cloud login helpers, OIDC). In a pod with no kubeconfig, the
    ServiceAccount. Proxy variables (HTTPS_PROXY, NO_PROXY) are honoured.
    """
    configuration = client.Configuration()
    # Read at call time, not kubernetes_asyncio's import-time default.
    path = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        loader = await config.load_kube_config(
            config_file=path, context=context, client_configuration=configuration
        )
    except Exception as kubeconfig_error:  # any broken or missing kubeconfig: try in-cluster
        try:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        except ConfigException as exc:
            raise KubeConfigError(f"{exc} (kubeconfig {path}: {_why(path, kubeconfig_error)})") from None
        return Kube(client.ApiClient(configuration)), "default"
    current = loader.current_context or {}
    namespace = str((current.get("context") or {}).get("namespace") or "default")
    return Kube(client.ApiClient(configuration)), namespace


def _why(path: str, error: Exception) -> str:
    """Why the kubeconfig did not load, in words safe to print."""
    if not any(os.path.exists(os.path.expanduser(p)) for p in path.split(os.pathsep) if p):
        return "no such file"
    # Only the loader's own messages: a YAML error quotes the file, which may hold a token.
    return str(error) if isinstance(error, ConfigException) else "unreadable"

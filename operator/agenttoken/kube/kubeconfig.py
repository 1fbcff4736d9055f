"""Connecting the adapter as a user's tools do (the CLI), rather than as the operator does.

`Kube.connect` (the operator) tries the pod's ServiceAccount first; a person at a terminal has a
kubeconfig, so this tries it first and falls back to the ServiceAccount (the CLI run in a pod).
"""

from __future__ import annotations

import os

import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.config.config_exception import ConfigException

from agenttoken.kube.adapter import Kube


class KubeConfigError(RuntimeError):
    """No usable cluster configuration: no kubeconfig that loads, and not in a pod either."""


async def connect_kubeconfig(context: str | None = None) -> tuple[Kube, str]:
    """The adapter for the kubeconfig's cluster, and the context's namespace ("default" if unset).

    Like kubectl: the files in KUBECONFIG (several, ':'-separated, merged) or ~/.kube/config;
    `context`, else the current context of the first file that sets one; any auth it names
    (client certificates, tokens, exec plugins such as cloud login helpers, OIDC). In a pod with
    no kubeconfig, the ServiceAccount. Proxy variables (HTTPS_PROXY, NO_PROXY) are honoured.
    """
    configuration = client.Configuration()
    # Read at call time, not kubernetes_asyncio's import-time default.
    path = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        loader = await config.load_kube_config(
            config_file=path, context=context or _current_context(path), client_configuration=configuration
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


def _current_context(path: str) -> str | None:
    """kubectl's current context for a KUBECONFIG list: the first file that sets one. (The
    client's own merge takes the last, so `kubectl agenttoken` could talk to another cluster
    than `kubectl get`.)"""
    for file in _files(path):
        with open(file) as f:
            doc = yaml.safe_load(f)
        if isinstance(doc, dict) and doc.get("current-context"):
            return str(doc["current-context"])
    return None


def _files(path: str) -> list[str]:
    """The files of a KUBECONFIG list that exist (kubectl skips the missing ones too)."""
    files = (os.path.expanduser(p) for p in path.split(os.pathsep) if p)
    return [f for f in files if os.path.exists(f)]


def _why(path: str, error: Exception) -> str:
    """Why the kubeconfig did not load, in words safe to print."""
    if not _files(path):
        return "no such file"
    # Only the loader's own messages: a YAML error quotes the file, which may hold a token.
    return str(error) if isinstance(error, ConfigException) else "unreadable"

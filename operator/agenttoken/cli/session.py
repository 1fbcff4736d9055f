"""The cluster connection of one CLI command, through the operator's adapter (`agenttoken.kube`)."""

from __future__ import annotations

import argparse
from typing import Any

from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError
from agenttoken.kube.kubeconfig import KubeConfigError, connect_kubeconfig

# Writes by a person at the CLI show up under their own name in managedFields, not the operator's.
FIELD_MANAGER = "agenttoken-cli"


class CliError(RuntimeError):
    """A user-facing error: printed as one line, exit code 1."""


class Session:
    """Opened on first use (`jwks --url` and `verify --url --token-file` need no cluster) and
    closed by `agenttoken.cli.main` when the command ends."""

    def __init__(self) -> None:
        self._kube: Kube | None = None
        self._namespace = "default"

    async def kube(self) -> Kube:
        if self._kube is None:
            try:
                self._kube, self._namespace = await connect_kubeconfig()
            except KubeConfigError as exc:
                raise CliError(f"no cluster configured (KUBECONFIG): {exc}") from None
        return self._kube

    async def close(self) -> None:
        if self._kube is not None:
            await self._kube.close()

    async def default_namespace(self) -> str:
        """The kubeconfig context's namespace ("default" when it names none)."""
        await self.kube()
        return self._namespace

    async def namespace(self, args: argparse.Namespace) -> str:
        """`-n`, or the context's namespace."""
        return str(args.namespace or await self.default_namespace())

    async def scope(self, args: argparse.Namespace) -> str | None:
        """Where to list: None for every namespace (`-A`), else `namespace(args)`."""
        if getattr(args, "all_namespaces", False):
            return None
        return await self.namespace(args)

    async def agenttoken(self, namespace: str, name: str) -> dict[str, Any]:
        obj = await (await self.kube()).get_agenttoken(namespace, name)
        if obj is None:
            raise CliError(f'AgentToken "{name}" not found in namespace "{namespace}"')
        return obj

    async def agenttokens(self, namespace: str | None, selector: str | None) -> list[dict[str, Any]]:
        try:
            return await (await self.kube()).list_agenttokens(namespace, selector)
        except KubeError as exc:
            if exc.not_found:  # the CRD is not installed: there are none
                return []
            raise

    async def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await (await self.kube()).get_configmap(namespace, name)

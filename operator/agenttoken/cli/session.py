"""The cluster connection of one CLI command, through the operator's adapter (`agenttoken.kube`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError
from agenttoken.kube.kubeconfig import KubeConfigError, connect_kubeconfig
from agenttoken.kube.retry import ConflictRetriesExhausted, retry_on_conflict

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

    async def update_configmap(
        self,
        namespace: str,
        name: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any] | None],
        what: str,
    ) -> bool:
        """Read-modify-write of one ConfigMap: `change(current)` returns the body to write (with the
        read resourceVersion, or none to create) or None when nothing is to change; read and
        decide again on 409. True if something was written."""
        kube = await self.kube()

        async def attempt() -> bool:
            body = change(await kube.get_configmap(namespace, name))
            if body is None:
                return False
            try:
                await kube.write_configmap(namespace, body)
            except KubeError as exc:
                if exc.conflict:
                    raise  # retry_on_conflict reads again
                raise CliError(f"writing the {what} ({namespace}/{name}) failed: HTTP {exc.status}") from None
            return True

        try:
            return await retry_on_conflict(attempt, what=what)
        except ConflictRetriesExhausted:
            raise CliError(f"writing the {what} kept conflicting; try again") from None

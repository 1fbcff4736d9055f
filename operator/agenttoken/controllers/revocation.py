"""Publishes the revocation list to a ConfigMap beside the JWKS (the operator's namespace).

One writer (this operator); every change is read-modify-write with the ConfigMap's
resourceVersion, so a second instance cannot drop entries. Expired entries are pruned on write.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agenttoken import api
from agenttoken.core import revocation
from agenttoken.core.revocation import Revoked
from agenttoken.kube.adapter import Kube, KubeError

REVOCATIONS_CONFIGMAP = "agenttoken-revocations"
LIST_KEY = "revoked.json"


def next_list(
    configmap: Mapping[str, Any] | None, new: Iterable[Revoked], now: datetime.datetime, namespace: str
) -> tuple[dict[str, Any], tuple[Revoked, ...]]:
    """One read-modify-write step, shared by the operator and `agenttoken revoke`: the ConfigMap
    body holding the stored list plus `new`, expired entries pruned. It carries the stored
    resourceVersion (a concurrent writer makes the write fail with 409) or none (create)."""
    current = revocation.from_json(((configmap or {}).get("data") or {}).get(LIST_KEY, ""))
    entries = revocation.prune(revocation.add(current, new), now)
    metadata: dict[str, Any] = {
        "name": REVOCATIONS_CONFIGMAP,
        "namespace": namespace,
        "labels": {api.LABEL_MANAGED_BY: api.OPERATOR_NAME},
    }
    version = ((configmap or {}).get("metadata") or {}).get("resourceVersion")
    if version is not None:
        metadata["resourceVersion"] = version
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {LIST_KEY: revocation.to_json(entries)},
    }
    return body, entries


class RevocationStore:
    def __init__(self, kube: Kube, namespace: str, clock: Callable[[], datetime.datetime]) -> None:
        self.kube = kube
        self.namespace = namespace
        self.clock = clock
        self.entries: tuple[Revoked, ...] = ()
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        cm = await self.kube.get_configmap(self.namespace, REVOCATIONS_CONFIGMAP)
        self.entries = revocation.from_json(((cm or {}).get("data") or {}).get(LIST_KEY, ""))

    async def revoke(self, new: Iterable[Revoked]) -> None:
        new = list(new)
        if not new:
            return
        async with self._lock:
            for _attempt in range(5):
                cm = await self.kube.get_configmap(self.namespace, REVOCATIONS_CONFIGMAP)
                body, entries = next_list(cm, new, self.clock(), self.namespace)
                try:
                    await self.kube.write_configmap(self.namespace, body)
                except KubeError as exc:
                    if exc.conflict:
                        continue
                    raise
                self.entries = entries
                return
            raise RuntimeError("revocation list: gave up after repeated write conflicts")

    async def follow(self) -> None:
        """Keep `entries` equal to the cluster's list (it may be written by `agenttoken revoke`)."""
        async for configmap in self.kube.watch_configmap(self.namespace, REVOCATIONS_CONFIGMAP):
            self.observe(configmap)

    def observe(self, configmap: Mapping[str, Any] | None) -> None:
        """Take the list as stored in the cluster (it may have been written by the CLI)."""
        self.entries = revocation.from_json(((configmap or {}).get("data") or {}).get(LIST_KEY, ""))

    def is_revoked(self, token_id: str) -> bool:
        return revocation.is_revoked(self.entries, token_id)

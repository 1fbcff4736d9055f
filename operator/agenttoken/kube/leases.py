"""coordination.k8s.io/v1 Leases in the operator's namespace: read, create, optimistic update.

Beside kube.adapter (same client, same raw-JSON calls), kept apart only for size. Every call is
bounded by the caller's timeout (controllers.leadership): a renewal that hangs must not hold up
the fencing decision, which is taken on the clock alone (core.lease.holds).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from kubernetes_asyncio import client, watch

from agenttoken import api
from agenttoken.core.lease import ANN_SHARDS, LeaseRecord
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import read_json, read_json_or_none

LABEL_ROLE = f"{api.GROUP}/lease"  # "shard" or "member"

log = logging.getLogger(__name__)


def _annotations(record: LeaseRecord) -> dict[str, str]:
    return {ANN_SHARDS: str(record.shards)} if record.shards is not None else {}


class Leases:
    def __init__(self, kube: Kube, namespace: str) -> None:
        self.namespace = namespace
        self.coordination: Any = client.CoordinationV1Api(kube.api_client)

    async def get(self, name: str) -> dict[str, Any] | None:
        return await read_json_or_none(
            self.coordination.read_namespaced_lease(name, self.namespace, _preload_content=False)
        )

    async def list(self, role: str) -> list[dict[str, Any]]:
        """Our Leases of one role (one LIST instead of a GET per Lease; needs `list` on leases)."""
        listing = await read_json(
            self.coordination.list_namespaced_lease(
                self.namespace, label_selector=f"{LABEL_ROLE}={role}", _preload_content=False
            )
        )
        return list(listing.get("items") or [])

    async def watch(self, role: str | None, name: str | None = None) -> AsyncIterator[dict[str, Any] | None]:
        """Every state of our Leases of `role` (None: of both roles; just `name` if given: RBAC
        grants `watch` on named Leases only with a name selector), the current ones first; forever. Yields None when the
        stream broke (the caller stops trusting it until the next body), then resumes from the
        current state after a short pause. Deletions are not reported: shard Leases are never
        deleted by us, and a reader's periodic GET/LIST notices one."""
        selector = {"field_selector": f"metadata.name={name}"} if name else {}
        pause = 1.0
        while True:
            try:
                async with watch.Watch().stream(
                    self.coordination.list_namespaced_lease,
                    self.namespace,
                    label_selector=f"{LABEL_ROLE}={role}" if role else LABEL_ROLE,
                    timeout_seconds=300,
                    **selector,
                ) as stream:
                    async for event in stream:
                        if event["type"] in ("ADDED", "MODIFIED"):
                            pause = 1.0
                            yield event["raw_object"]
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a watch must outlive the apiserver's moods
                log.warning(
                    "watch of the %s Leases interrupted (%s); resuming", role or "", type(exc).__name__
                )
                yield None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)  # e.g. forbidden: do not spin on it

    def _body(self, name: str, role: str, record: LeaseRecord) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": {LABEL_ROLE: role, api.LABEL_MANAGED_BY: api.OPERATOR_NAME},
            "annotations": _annotations(record),
        }
        if record.version is not None:
            metadata["resourceVersion"] = record.version
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": record.spec(),
        }

    async def create(self, name: str, role: str, record: LeaseRecord) -> dict[str, Any]:
        """Create it (KubeError 409 when another candidate created it first)."""
        return await read_json(
            self.coordination.create_namespaced_lease(
                self.namespace,
                self._body(name, role, record),
                field_manager=api.FIELD_MANAGER,
                _preload_content=False,
            )
        )

    async def update(self, name: str, role: str, record: LeaseRecord) -> dict[str, Any]:
        """Replace the spec if the Lease is still at `record.version` (KubeError 409 if not):
        the optimistic lock that makes two candidates' writes exclude each other."""
        return await read_json(
            self.coordination.replace_namespaced_lease(
                name,
                self.namespace,
                self._body(name, role, record),
                field_manager=api.FIELD_MANAGER,
                _preload_content=False,
            )
        )

    async def delete(self, name: str, version: str | None) -> None:
        """Delete if still at `version` (our own member Lease on a clean shutdown)."""
        options = {"preconditions": {"resourceVersion": version}} if version else {}
        await read_json_or_none(
            self.coordination.delete_namespaced_lease(
                name, self.namespace, body=options, _preload_content=False
            )
        )

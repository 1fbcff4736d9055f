"""coordination.k8s.io/v1 Leases in the operator's namespace: read, create, optimistic update.

Beside kube.adapter (same client, same raw-JSON calls), kept apart only for size. Every call is
bounded by the caller's timeout (controllers.leadership): a renewal that hangs must not hold up
the fencing decision, which is taken on the clock alone (core.lease.holds).
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from agenttoken import api
from agenttoken.core.lease import ANN_SHARDS, LeaseRecord
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import read_json, read_json_or_none

LABEL_ROLE = f"{api.GROUP}/lease"  # "shard" or "member"


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

    async def create(self, name: str, role: str, record: LeaseRecord) -> dict[str, Any]:
        """Create it (KubeError 409 when another candidate created it first)."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {LABEL_ROLE: role, api.LABEL_MANAGED_BY: api.OPERATOR_NAME},
                "annotations": _annotations(record),
            },
            "spec": record.spec(),
        }
        return await read_json(
            self.coordination.create_namespaced_lease(
                self.namespace, body, field_manager=api.FIELD_MANAGER, _preload_content=False
            )
        )

    async def update(self, name: str, role: str, record: LeaseRecord) -> dict[str, Any]:
        """Replace the spec if the Lease is still at `record.version` (KubeError 409 if not):
        the optimistic lock that makes two candidates' writes exclude each other."""
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "resourceVersion": record.version,
                "labels": {LABEL_ROLE: role, api.LABEL_MANAGED_BY: api.OPERATOR_NAME},
                "annotations": _annotations(record),
            },
            "spec": record.spec(),
        }
        return await read_json(
            self.coordination.replace_namespaced_lease(
                name, self.namespace, body, field_manager=api.FIELD_MANAGER, _preload_content=False
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

"""The one Kubernetes adapter: every read and write the operator makes goes through here.

Built on kubernetes_asyncio (never block the event loop with a sync client) with raw JSON
responses (`_preload_content=False`): the model classes cost CPU per call and we only need
dicts. Errors become `KubeError` carrying the HTTP status and the apiserver's short reason,
never a request body (it could hold a token).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.config.config_exception import ConfigException

from agenttoken import api
from agenttoken.core.names import event_name
from agenttoken.kube.errors import KubeError, read_json, read_json_or_none

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
WORKLOAD_PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets", "DaemonSet": "daemonsets"}


async def _no_env_lookups(api_client: client.ApiClient) -> None:
    """kubernetes_asyncio opens its aiohttp session with `trust_env=True`, so every request looks
    up proxy variables and reads ~/.netrc in a thread (aiohttp >= 3.10): measured as a quarter of
    the operator's CPU in a burst of new AgentTokens (bench/lifecycle.py --profile). Without any
    proxy variable set there is nothing to find, so the same session is reopened without it."""
    if urllib.request.getproxies_environment():
        return  # a proxy is configured: keep honouring it (and NO_PROXY)
    rest = api_client.rest_client
    old = rest.pool_manager
    rest.pool_manager = aiohttp.ClientSession(
        connector=old.connector, connector_owner=True, trust_env=False, read_bufsize=2**21
    )
    old._connector_owner = False  # the connector now belongs to the new session
    await old.close()


class Kube:
    """Async operations on the objects this operator owns or reads."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        # Typed as Any: we pass plain dicts and raw-response kwargs the generated stubs do not declare.
        self.core: Any = client.CoreV1Api(api_client)
        self.custom: Any = client.CustomObjectsApi(api_client)

    @classmethod
    async def connect(cls) -> Kube:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
        except ConfigException:
            await config.load_kube_config()
        api_client = client.ApiClient()
        await _no_env_lookups(api_client)
        return cls(api_client)

    async def close(self) -> None:
        await self.api_client.close()

    # -- Secrets --

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_json_or_none(
            self.core.read_namespaced_secret(name, namespace, _preload_content=False)
        )

    async def create_secret(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await read_json(
            self.core.create_namespaced_secret(
                namespace, body, field_manager=api.FIELD_MANAGER, _preload_content=False
            )
        )

    async def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await read_json(
            self.core.patch_namespaced_secret(
                name,
                namespace,
                patch,
                field_manager=api.FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )

    async def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Optimistic update: `body.metadata.resourceVersion` must match or KubeError(409)."""
        return await read_json(
            self.core.replace_namespaced_secret(
                name, namespace, body, field_manager=api.FIELD_MANAGER, _preload_content=False
            )
        )

    # -- ConfigMaps --

    async def apply_configmap(self, namespace: str, name: str, data: dict[str, str]) -> None:
        body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace}}
        try:
            await read_json(
                self.core.patch_namespaced_config_map(
                    name,
                    namespace,
                    {"data": data, "metadata": {"labels": {api.LABEL_MANAGED_BY: api.OPERATOR_NAME}}},
                    field_manager=api.FIELD_MANAGER,
                    _content_type=MERGE_PATCH,
                    _preload_content=False,
                )
            )
        except KubeError as exc:
            if not exc.not_found:
                raise
            body["data"] = data
            body["metadata"]["labels"] = {api.LABEL_MANAGED_BY: api.OPERATOR_NAME}  # type: ignore[index]
            await read_json(
                self.core.create_namespaced_config_map(
                    namespace, body, field_manager=api.FIELD_MANAGER, _preload_content=False
                )
            )

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_json_or_none(
            self.core.read_namespaced_config_map(name, namespace, _preload_content=False)
        )

    async def write_configmap(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create `body`, or replace it when it carries a resourceVersion (KubeError 409 if it moved)."""
        name = body["metadata"]["name"]
        if body["metadata"].get("resourceVersion") is None:
            return await read_json(
                self.core.create_namespaced_config_map(
                    namespace, body, field_manager=api.FIELD_MANAGER, _preload_content=False
                )
            )
        return await read_json(
            self.core.replace_namespaced_config_map(
                name, namespace, body, field_manager=api.FIELD_MANAGER, _preload_content=False
            )
        )

    def watch_configmap(self, namespace: str, name: str) -> AsyncIterator[dict[str, Any] | None]:
        """Yields the ConfigMap (None once deleted) on every change, forever; resumes after errors.
        Scoped to one object in one namespace, so it needs no cluster-wide permission."""
        return self._watch_one(self.core.list_namespaced_config_map, "ConfigMap", namespace, name)

    def watch_secret(
        self, namespace: str, name: str, since: str | None = None
    ) -> AsyncIterator[dict[str, Any] | None]:
        """Yields the Secret (None once deleted) on every change, forever: one Secret that is
        not ours (no label to watch it by), e.g. the one an AgentToken is in conflict with.
        `since`: the resourceVersion last seen, so a change right before the watch is not missed."""
        return self._watch_one(self.core.list_namespaced_secret, "Secret", namespace, name, since)

    async def _watch_one(
        self, lister: Any, kind: str, namespace: str, name: str, since: str | None = None
    ) -> AsyncIterator[dict[str, Any] | None]:
        """A watch of one object by name (it need not exist): yields it on every event, None
        when it is deleted; resumes after errors and the server's timeout (from the current
        state: the object again, or nothing if it is absent)."""
        while True:
            watcher = watch.Watch()
            start = {"resource_version": since} if since else {}
            since = None
            try:
                async with watcher.stream(
                    lister, namespace, field_selector=f"metadata.name={name}", timeout_seconds=300, **start
                ) as stream:
                    async for event in stream:
                        yield None if event["type"] == "DELETED" else event["raw_object"]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The type only: a Secret watch's error text could quote what it was reading.
                log.warning(
                    "watch of %s %s/%s interrupted (%s); resuming", kind, namespace, name, type(exc).__name__
                )
                await asyncio.sleep(2)

    # -- workloads --

    async def get_workload(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_json_or_none(
            self.custom.get_namespaced_custom_object(
                "apps", "v1", namespace, WORKLOAD_PLURALS[kind], name, _preload_content=False
            )
        )

    async def list_consumers(self, namespace: str) -> dict[str, list[dict[str, Any]]]:
        """Everything in `namespace` that can read a Secret, by kind (workloads, Pods, CronJobs):
        a fresh read, for the rare steps that must not trust a cache."""
        found: dict[str, list[dict[str, Any]]] = {}
        for kind, plural in WORKLOAD_PLURALS.items():
            listing = await read_json(
                self.custom.list_namespaced_custom_object(
                    "apps", "v1", namespace, plural, _preload_content=False
                )
            )
            found[kind] = list(listing.get("items") or [])
        pods = await read_json(self.core.list_namespaced_pod(namespace, _preload_content=False))
        found["Pod"] = list(pods.get("items") or [])
        cronjobs = await read_json(
            self.custom.list_namespaced_custom_object(
                "batch", "v1", namespace, "cronjobs", _preload_content=False
            )
        )
        found["CronJob"] = list(cronjobs.get("items") or [])
        return found

    async def list_workload_refs(self, namespace: str | None) -> set[tuple[str, str, str]]:
        """(kind, namespace, name) of every Deployment, StatefulSet and DaemonSet in `namespace`
        (None: cluster-wide), in pages: tells when the watch caches have caught up (kube.caches)."""
        found: set[tuple[str, str, str]] = set()
        for kind, plural in WORKLOAD_PLURALS.items():
            page_token: str | None = None
            while True:
                paging: dict[str, Any] = {"limit": 500, "_preload_content": False}
                if page_token:
                    paging["_continue"] = page_token
                if namespace is None:
                    call = self.custom.list_cluster_custom_object("apps", "v1", plural, **paging)
                else:
                    call = self.custom.list_namespaced_custom_object(
                        "apps", "v1", namespace, plural, **paging
                    )
                page = await read_json(call)
                for item in page.get("items") or []:
                    meta = item.get("metadata") or {}
                    found.add((kind, str(meta.get("namespace", "")), str(meta.get("name", ""))))
                page_token = (page.get("metadata") or {}).get("continue") or None
                if not page_token:
                    break
        return found

    async def list_namespace_names(self) -> list[str]:
        listing = await read_json(self.core.list_namespace(_preload_content=False))
        return [str((ns.get("metadata") or {}).get("name", "")) for ns in listing.get("items") or []]

    async def patch_pod_template_annotations(
        self, kind: str, namespace: str, name: str, annotations: dict[str, str]
    ) -> dict[str, Any]:
        """Touch only our annotation keys in the pod template, as our own field manager."""
        patch = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
        return await read_json(
            self.custom.patch_namespaced_custom_object(
                "apps",
                "v1",
                namespace,
                WORKLOAD_PLURALS[kind],
                name,
                patch,
                field_manager=api.FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )

    async def patch_agenttoken(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await read_json(
            self.custom.patch_namespaced_custom_object(
                api.GROUP,
                api.VERSION,
                namespace,
                api.AGENTTOKEN_PLURAL,
                name,
                patch,
                field_manager=api.FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )

    # -- issuers --

    async def create_token(
        self, namespace: str, service_account: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return await read_json(
            self.core.create_namespaced_service_account_token(
                service_account, namespace, body, _preload_content=False
            )
        )

    async def get_namespace(self, name: str) -> dict[str, Any] | None:
        return await read_json_or_none(self.core.read_namespace(name, _preload_content=False))

    async def get_issuer(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        plural = api.ISSUER_PLURALS[kind]
        if namespace:
            call = self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, plural, name, _preload_content=False
            )
        else:
            call = self.custom.get_cluster_custom_object(
                api.GROUP, api.VERSION, plural, name, _preload_content=False
            )
        return await read_json_or_none(call)

    async def patch_issuer_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        plural = api.ISSUER_PLURALS[kind]
        common = {"field_manager": api.FIELD_MANAGER, "_content_type": MERGE_PATCH, "_preload_content": False}
        if namespace:
            call = self.custom.patch_namespaced_custom_object_status(
                api.GROUP, api.VERSION, namespace, plural, name, {"status": status}, **common
            )
        else:
            call = self.custom.patch_cluster_custom_object_status(
                api.GROUP, api.VERSION, plural, name, {"status": status}, **common
            )
        return await read_json(call)

    # -- AgentTokens --

    async def patch_agenttoken_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        return await read_json(
            self.custom.patch_namespaced_custom_object_status(
                api.GROUP,
                api.VERSION,
                namespace,
                api.AGENTTOKEN_PLURAL,
                name,
                {"status": status},
                field_manager=api.FIELD_MANAGER,
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        )

    # -- Events --

    async def emit_event(
        self, involved: dict[str, Any], *, warning: bool, reason: str, message: str, count: int = 1
    ) -> None:
        """A core/v1 Event about `involved` (apiVersion, kind, namespace, name, uid); `count`
        occurrences (kube.events aggregates alike Events of a burst into one)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = involved["namespace"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": event_name(involved["name"]), "namespace": namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": api.OPERATOR_NAME},
            "reportingComponent": api.OPERATOR_NAME,
            "reportingInstance": api.OPERATOR_NAME,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": count,
        }
        await read_json(self.core.create_namespaced_event(namespace, body, _preload_content=False))

    # -- for the CLI (`agenttoken status|rotate|revoke|...`; the operator uses none of these) --

    async def get_agenttoken(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await read_json_or_none(
            self.custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, api.AGENTTOKEN_PLURAL, name, _preload_content=False
            )
        )

    async def list_agenttokens(
        self, namespace: str | None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        """AgentTokens in `namespace` (every namespace when None), optionally by label selector."""
        return list((await self.list_page(api.AGENTTOKEN_PLURAL, namespace, selector)).get("items") or [])

    async def list_page(
        self, plural: str, namespace: str | None, selector: str | None = None, limit: int = 0, token: str = ""
    ) -> dict[str, Any]:
        """One page of AgentTokens (api.AGENTTOKEN_PLURAL) in `namespace` (all when None), or of
        "secrets" in it: `limit` items (0: all) from `token` (the last page's metadata.continue)."""
        given = {"label_selector": selector, "limit": limit, "_continue": token}
        kw: dict[str, Any] = {"_preload_content": False, **{k: v for k, v in given.items() if v}}
        if plural == "secrets":
            call = self.core.list_namespaced_secret(namespace, **kw)
        elif namespace is None:
            call = self.custom.list_cluster_custom_object(api.GROUP, api.VERSION, plural, **kw)
        else:
            call = self.custom.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, plural, **kw)
        return await read_json(call)

    async def annotate_agenttoken(
        self, namespace: str, name: str, annotations: dict[str, str], *, field_manager: str
    ) -> dict[str, Any]:
        """Merge `annotations` into the AgentToken's, recorded under `field_manager`."""
        patch = {"metadata": {"annotations": annotations}}
        call = self.custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.AGENTTOKEN_PLURAL, name, patch,
            field_manager=field_manager, _content_type=MERGE_PATCH, _preload_content=False,
        )  # fmt: skip
        return await read_json(call)

    async def list_events(self, namespace: str, involved_name: str) -> list[dict[str, Any]]:
        """core/v1 Events in `namespace` about objects named `involved_name`, oldest first."""
        listing = await read_json(
            self.core.list_namespaced_event(
                namespace, field_selector=f"involvedObject.name={involved_name}", _preload_content=False
            )
        )
        items = list(listing.get("items") or [])
        return sorted(items, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

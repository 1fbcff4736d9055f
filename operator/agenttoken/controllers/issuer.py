"""Issuers: which issuer an AgentToken may use (found, ready, its policy allows it), and the
TokenIssuer/ClusterTokenIssuer status (Ready with a reason: spec valid, credentials present,
keys loaded). Minting itself is `issuers.registry`, called by controllers.issuing.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agenttoken import api
from agenttoken.core.conditions import Reason
from agenttoken.core.conditions import summarize as summarize_conditions
from agenttoken.core.lease import shard_of
from agenttoken.core.model import AgentTokenSpec, InvalidSpec
from agenttoken.core.policy import Request as PolicyRequest
from agenttoken.core.policy import check as check_policy
from agenttoken.core.status import differs
from agenttoken.issuers import IssuerSpec, parse_issuer
from agenttoken.issuers.registry import Registry
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

Key = tuple[str, str]  # an AgentToken's (namespace, name)
IssuerKey = tuple[str, str, str]  # (kind, namespace or "", name)
Clock = Callable[[], datetime.datetime]
Reconcile = Callable[[str, dict[str, Any]], Awaitable[None]]

log = logging.getLogger(__name__)


class Issuers:
    def __init__(self, kube: Kube, registry: Registry, clock: Clock, recheck: Callable[[Key], None]) -> None:
        self.kube = kube
        self.registry = registry
        self.clock = clock
        self.recheck = recheck  # look at an AgentToken again (the work queue)
        self.bodies: dict[IssuerKey, dict[str, Any]] = {}
        self._users: dict[IssuerKey, set[Key]] = {}  # which AgentTokens use each issuer
        self._used: dict[Key, IssuerKey] = {}  # reverse of _users
        # Namespace labels from a namespaces watch (cluster-wide mode); a miss falls back to a GET.
        self.namespace_labels: dict[str, dict[str, str]] = {}
        # Issuers not in the cache that were read once: right after a start, AgentTokens can be
        # listed before their issuer is (the issuer watch retried, or is slower); without a read
        # each would be written IssuerNotFound (status write and Event) and then issued: one
        # status write more per new AgentToken in a burst right after a start.
        self._read_once: set[IssuerKey] = set()
        self._watched: set[IssuerKey] = set()  # issuers the watch told us anything about
        self._resyncs: set[asyncio.Task[None]] = set()

    # -- watch events --

    def on_event(self, kind: str, event_type: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        ikey = (kind, meta.get("namespace", "") if kind == api.TOKENISSUER_KIND else "", meta.get("name", ""))
        self._watched.add(ikey)
        if event_type == "DELETED":
            self.bodies.pop(ikey, None)
        else:
            self.bodies[ikey] = body
        for key in list(self._users.get(ikey, ())):
            self.recheck(key)

    def on_namespace_event(self, event_type: str | None, body: dict[str, Any]) -> bool:
        """Keep namespace labels for issuer namespace selectors; True when a namespace's labels
        changed (a ClusterTokenIssuer may now select, or no longer select, its AgentTokens)."""
        meta = body.get("metadata", {})
        name = meta.get("name", "")
        before = self.namespace_labels.get(name)
        if event_type == "DELETED":
            self.namespace_labels.pop(name, None)
            return False
        labels = dict(meta.get("labels") or {})
        self.namespace_labels[name] = labels
        return before is not None and before != labels

    def forget(self, key: Key) -> None:
        issuer = self._used.pop(key, None)
        if issuer is not None:
            self._users.get(issuer, set()).discard(key)

    # -- for an AgentToken --

    async def resolve(self, key: Key, spec: AgentTokenSpec) -> IssuerSpec | Reason:
        """The issuer this AgentToken may use, or why not (not found, not ready, policy)."""
        namespace = key[0]
        kind = spec.issuer_kind
        ikey = (kind, namespace if kind == api.TOKENISSUER_KIND else "", spec.issuer_name)
        before = self._used.get(key)
        if before != ikey:
            if before is not None:
                self._users.get(before, set()).discard(key)
            self._used[key] = ikey
        self._users.setdefault(ikey, set()).add(key)
        body = self.bodies.get(ikey)
        if body is None and ikey not in self._read_once:
            self._read_once.add(ikey)
            body = await self.kube.get_issuer(*ikey)
            if body is not None and ikey not in self._watched:
                self.bodies[ikey] = body  # the watch brings it (or a newer state) soon anyway
            body = self.bodies.get(ikey)
        where = f" in namespace {namespace}" if kind == api.TOKENISSUER_KIND else ""
        if body is None:
            return Reason(api.REASON_ISSUER_NOT_FOUND, f"{kind} {spec.issuer_name!r} not found{where}")
        try:
            issuer = parse_issuer(kind, body)
        except InvalidSpec as exc:
            return Reason("IssuerNotReady", f"{kind} {spec.issuer_name!r} is not ready: {exc}")
        labels = await self.labels(namespace) if issuer.policy.namespace_selector else {}
        request = PolicyRequest(
            namespace=namespace,
            namespace_labels=labels,
            scopes=spec.scopes,
            audience=spec.audience,
            ttl=spec.ttl,
            name=key[1],
            subject=spec.subject,
            environment=spec.environment,
        )
        violation = check_policy(issuer.policy, request)
        if violation is not None:
            return Reason(api.REASON_POLICY_VIOLATION, f"{kind} {spec.issuer_name!r}: {violation.message}")
        return issuer

    async def labels(self, namespace: str) -> dict[str, str]:
        cached = self.namespace_labels.get(namespace)
        if cached is not None:
            return cached
        ns = await self.kube.get_namespace(namespace)
        return dict(((ns or {}).get("metadata") or {}).get("labels") or {})

    # -- issuer status --

    def resync(self, shard: int, shards: int, reconcile: Reconcile) -> None:
        """A shard was gained (controllers.leadership): look again, from the cache, at the status
        of the issuers its holder writes: TokenIssuers in its namespaces, and with shard 0 (the
        primary's) every ClusterTokenIssuer. The last holder may have died between an issuer's
        change and its status write, and the watch does not deliver that change again. An
        unchanged status is not written (`reconcile` compares), so this costs no API call."""
        todo = [
            (kind, body)
            for (kind, namespace, _), body in self.bodies.items()
            if (shard_of(namespace, shards) == shard if kind == api.TOKENISSUER_KIND else shard == 0)
        ]
        if todo:
            task = asyncio.create_task(
                self._resync(todo, reconcile), name=f"agenttoken-issuers-shard-{shard}"
            )
            self._resyncs.add(task)
            task.add_done_callback(self._resyncs.discard)

    async def _resync(self, todo: list[tuple[str, dict[str, Any]]], reconcile: Reconcile) -> None:
        for kind, body in todo:
            try:
                await reconcile(kind, body)
            except Exception as exc:  # one issuer's failure must not skip the others
                name = body.get("metadata", {}).get("name")
                log.warning("status of %s %s after a takeover failed: %s", kind, name, type(exc).__name__)

    async def reconcile(self, kind: str, body: dict[str, Any]) -> None:
        """Issuer status: Ready with a reason (spec valid, credentials present, keys loaded)."""
        meta = body.get("metadata", {})
        status: dict[str, Any] = {"observedGeneration": meta.get("generation")}
        try:
            issuer = parse_issuer(kind, body)
            status["type"] = issuer.type
            problem = await self.registry.problem(issuer)
        except InvalidSpec as exc:
            problem = Reason(api.REASON_INVALID_SPEC, str(exc))
        ready = None if problem else Reason("IssuerReady", f"{status.get('type')} issuer ready")
        status["conditions"] = summarize_conditions(
            previous=(body.get("status") or {}).get("conditions") or [],
            generation=meta.get("generation"),
            now=self.clock(),
            ready=ready,
            stalled=problem,
        )
        if not differs(body.get("status"), status):
            return
        try:
            await self.kube.patch_issuer_status(kind, meta.get("namespace", ""), meta["name"], status)
        except KubeError as exc:
            if not exc.not_found:
                raise

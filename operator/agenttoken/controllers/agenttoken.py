"""The AgentToken controller: feeds the caches from watch events, and reconciles one AgentToken
as a list of steps.

Data flows one way: watch event -> cache -> work queue -> `reconcile`, which reads the caches,
lets the pure core decide (`core.renewal.decide`, `core.outcome`, `core.rolloutreport`), and
applies it through the steps below; status is written once per pass. After a restart, the
initial listing queues every AgentToken at its recorded renewal time, so overdue tokens are
renewed first, oldest first, and tokens that are still good are not touched.

Steps, each in its own module: finalizer (controllers.finalizer), spec and issuer
(controllers.issuer), usage (controllers.usage), issuing (controllers.issuing), rollout and
revocation of the previous token (controllers.rollout).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
from collections.abc import Callable, Iterable
from typing import Any

from agenttoken import api
from agenttoken.controllers import metrics, podstatus, takeover
from agenttoken.controllers.conflicts import ConflictWatch
from agenttoken.controllers.context import Key, Pass, involved
from agenttoken.controllers.finalizer import Revoker
from agenttoken.controllers.issuer import Issuers
from agenttoken.controllers.issuing import Issuing, NotOwned
from agenttoken.controllers.keys import KeyManager
from agenttoken.controllers.leadership import Leadership
from agenttoken.controllers.queue import WorkQueue
from agenttoken.controllers.revocation import RevocationStore
from agenttoken.controllers.rollout import RolloutManager, RolloutStep
from agenttoken.controllers.secrets import SecretAppeared, SecretStore
from agenttoken.controllers.usage import Usage
from agenttoken.core import outcome as outcomes
from agenttoken.core import templates
from agenttoken.core.bodycache import BodyCache
from agenttoken.core.conditions import Reason
from agenttoken.core.model import AgentTokenSpec, InvalidSpec, TokenStatus, parse_spec, parse_status
from agenttoken.core.outcome import Event
from agenttoken.core.renewal import Action, Decision, Snapshot, decide
from agenttoken.core.rollout import InterestIndex, Workload, WorkloadRef
from agenttoken.core.secretdata import TokenRecord, observe, owner_name
from agenttoken.core.status import Outcome, differs, render
from agenttoken.core.templates import TemplateError
from agenttoken.issuers.credentials import IssuerDeps
from agenttoken.issuers.registry import Registry
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError
from agenttoken.kube.events import EventRecorder

log = logging.getLogger(__name__)

Clock = Callable[[], datetime.datetime]


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass
class ControllerOptions:
    issuer_url: str
    workers: int = 32
    # Warn when this fraction of the lifetime or less is left and renewal is still failing.
    expiry_warning_fraction: float = 0.1
    # Seconds of extra margin after the workload cache is synced before consumption is judged.
    usage_warmup: float = 0.0


class Controller:
    def __init__(
        self,
        kube: Kube,
        keys: KeyManager,
        options: ControllerOptions,
        clock: Clock = utcnow,
        rollouts: RolloutManager | None = None,
        revocations: RevocationStore | None = None,
        events: EventRecorder | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.kube = kube
        # Per-AgentToken work only for the shards this replica holds (all without leadership).
        self.leadership = leadership or Leadership(None, identity="local")
        self.options = options
        self.clock = clock
        self.tokens = BodyCache()
        self.secrets = SecretStore(kube)
        self.events = events or EventRecorder(kube)
        self.queue = WorkQueue(
            self.reconcile, clock, options.workers, accept=lambda key: self.leadership.owns(key[0])
        )
        self.keys = keys
        keys.subscribe_revoked(self.on_keys_revoked)
        registry = Registry(
            IssuerDeps(
                kube=kube,
                signing_key=lambda: keys.signing_key(),
                assertion_key=lambda: keys.assertion_key(),
                issuer_url=options.issuer_url,
                operator_namespace=keys.namespace,
            )
        )
        self.issuers = Issuers(kube, registry, clock, self.queue.now)
        self.revoker = Revoker(kube, revocations, clock)
        workloads = rollouts.workloads if rollouts else None
        self.usage = Usage(
            kube, workloads, self.revoker, clock, margin=options.usage_warmup, recheck=self.queue.now
        )
        self.issuing = Issuing(kube, self.secrets, registry, clock, may_write=self.leadership.owns)
        self.rollout = RolloutStep(rollouts, self.revoker, clock, recheck=self.queue.now)
        self.conflicts = ConflictWatch(kube, self.queue.now)
        self._interest = InterestIndex()  # which AgentTokens a workload or namespace event concerns
        self._warned_expiry: dict[Key, str] = {}  # warn-once: the token id warned about
        if rollouts is not None:
            rollouts.workloads.subscribe(self.on_workload_change)
        self.shardcache = takeover.ShardCache(
            kube, self.leadership, self.tokens, self.secrets, self.queue, self._enqueue, lambda: self.clock()
        )
        self.leadership.subscribe(self.on_shard_change)

    async def start(self) -> None:
        await self.queue.start()

    async def stop(self) -> None:
        await self.queue.stop()
        await self.shardcache.stop()
        self.rollout.stop()
        await self.conflicts.stop()
        await self.events.flush()

    # -- watch events feed the caches and the queue --

    def on_token_event(self, kind: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if kind == "DELETED":
            self.shardcache.deleted(key, body)
            self.queue.forget(key)
            self._interest.drop(*key)
            self._warned_expiry.pop(key, None)
            self.conflicts.release(key)
            for step in (self.issuing, self.rollout, self.issuers, self.usage):
                step.forget(key)
            metrics.forget(key)
        elif self.shardcache.keeps(key):  # sharded: of another shard's AgentToken, only the name
            self._store(key, body)

    def _store(self, key: Key, body: dict[str, Any]) -> None:
        # One shard: a standby keeps the body (warm for a takeover) but schedules nothing.
        if self.tokens.offer(key, body) and self.leadership.owns(key[0]):
            self._enqueue(key, body)

    def _enqueue(self, key: Key, body: dict[str, Any]) -> None:
        takeover.enqueue(self.queue, self.clock(), key, body)

    def on_secret_event(self, kind: str | None, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        namespace = meta.get("namespace", "")
        if self.leadership.shards > 1 and not self.leadership.owns(namespace):
            # Sharded: another replica's Secrets (tokens!) are not kept here. A takeover reads
            # each one fresh before acting on it (the decision's fresh read, controllers.issuing).
            self.secrets.not_ours(kind, (namespace, meta.get("name", "")))
            return
        if self.secrets.on_event(kind, body):
            self._owner_now(namespace, owner_name(body))  # the full name, even past 63 characters

    def _owner_now(self, namespace: str, owner: str | None) -> None:
        if owner and self.tokens.get((namespace, owner)) is not None:
            self.queue.now((namespace, owner))

    def on_keys_revoked(self, kids: frozenset[str]) -> None:
        """Signing keys were revoked: every AgentToken whose token one of them signed, now."""
        for key in takeover.signed_by(kids, self.secrets, self.tokens):
            self.queue.now(key)

    def on_shard_change(self, shard: int, held: bool) -> None:
        takeover.shard_changed(
            shard, held, self.leadership.shards, cache=self.shardcache, secrets=self.secrets,
            enqueue=self._enqueue, issuers=self.issuers, reconcile_issuer=self.reconcile_issuer,
        )  # fmt: skip

    async def reconcile_issuer(self, kind: str, body: dict[str, Any]) -> None:
        """Issuer status is written by one replica: a TokenIssuer's by its namespace's shard
        holder, a ClusterTokenIssuer's by the primary."""
        namespace = body.get("metadata", {}).get("namespace", "")
        if self.leadership.owns(namespace) if kind == api.TOKENISSUER_KIND else self.leadership.is_primary():
            await self.issuers.reconcile(kind, body)

    def on_namespace_event(self, event_type: str | None, body: dict[str, Any]) -> None:
        if self.issuers.on_namespace_event(event_type, body):
            name = body.get("metadata", {}).get("name", "")
            for token in self._interest.in_namespace(name):
                self.queue.now((name, token))

    def on_workload_change(self, ref: WorkloadRef, workload: Workload | None) -> None:
        """A workload changed: look again at the AgentTokens that target or feed it."""
        for name in self._interest.concerned(ref, workload):
            self.queue.now((ref.namespace, name))

    # -- one AgentToken --

    async def reconcile(self, key: Key) -> None:
        body = self.tokens.get(key)
        if body is None or not self.leadership.owns(key[0]):
            return  # gone, or another replica's now (the new holder queues it)
        try:
            await self._reconcile(key, body)
        except NotOwned:
            log.info("stopped %s/%s mid-pass: this replica no longer holds its shard", *key)

    async def _reconcile(self, key: Key, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            events, retry = await self.revoker.finalize(body)
            self._post(body, events)
            if retry is not None:
                self.queue.schedule(key, retry)
            return
        if api.REVOKE_FINALIZER not in (meta.get("finalizers") or []):
            await self._add_finalizer(key, body)
        p = await self._begin(key, body)
        if p is None:
            return  # stalled: invalid spec or template, issuer missing or refusing
        if p.spec.per_pod:  # no Secret, nothing to renew or roll out: pods ask the token endpoint
            return await podstatus.reconcile(self.kube, self.tokens, p, self.options, self.leadership)
        usage, events = await self.usage.assess(p)
        self._post(body, events)
        if usage is not None and usage.usage.suspends_renewal:
            p = dataclasses.replace(p, spec=dataclasses.replace(p.spec, suspend=True))
        snap, decision = await self._decide(p)
        record = outcomes.reported_record(snap, decision)
        outcome = outcomes.starting_outcome(p.previous, p.spec)
        if usage is not None:
            outcome = outcomes.with_usage(outcome, usage, p.spec, record)
        try:
            record, issued = await self.issuing.step(p, snap, decision, record, outcome)
        except SecretAppeared:
            self.queue.now(key)  # decide again with it (ours to adopt, drifted, or a conflict)
            return
        self._post(body, issued.events)
        status: dict[str, Any] = {"rollout": None, "consumers": None}
        conflict = decision.action is Action.CONFLICT  # watched: resolves itself (controllers.conflicts)
        wake = self.conflicts.follow(
            p.key, p.secret_key, conflict, self.secrets.get(p.secret_key), self.clock()
        )
        outcome = issued.outcome
        self._index_for_workloads(key, p.spec)
        if record is not None:
            rolled = await self.rollout.step(p, record, outcome)
            self._post(body, rolled.events)
            outcome, wake = rolled.outcome, [*rolled.wake]
            status.update(rolled.status)
        if usage is not None:
            status["usage"] = usage.usage.to_status()
            wake.extend([usage.wake_at] if usage.wake_at else [])
        await self._write_status(body, p.previous, p.spec, record, outcome, status)
        self._warn_if_expiring(body, key, p.spec, record, outcome)
        self._schedule_next(p, record, decision, outcome, wake)

    async def _begin(self, key: Key, body: dict[str, Any]) -> Pass | None:
        """The spec and the issuer it may use; else status says why (Stalled) and None."""
        previous = parse_status(body.get("status"))
        try:
            spec = parse_spec(body.get("spec") or {})
        except InvalidSpec as exc:
            why = Reason(api.REASON_INVALID_SPEC, str(exc))
            await self._write_status(body, previous, None, None, Outcome(stalled=why))
            return None
        problem: Reason | None = None
        if spec.config is not None:
            try:
                templates.check(spec.config.template)
            except TemplateError as exc:
                problem = outcomes.template_problem(exc)
        issuer = problem if problem is not None else await self.issuers.resolve(key, spec)
        if isinstance(issuer, Reason):
            await self._write_status(body, previous, spec, None, Outcome(stalled=issuer))
            self._index_for_workloads(key, spec)
            return None
        return Pass(body=body, spec=spec, issuer=issuer, previous=previous, now=self.clock())

    async def _decide(self, p: Pass) -> tuple[Snapshot, Decision]:
        """What to do with the token (core.renewal.decide), on a fresh read of the Secret
        before acting: the cache may lag (e.g. right after a restart)."""
        rotate = (p.body["metadata"].get("annotations") or {}).get(api.ANN_ROTATE)

        def snapshot() -> Snapshot:
            observed = observe(self.secrets.get(p.secret_key), name=p.name, uid=p.uid, spec=p.spec)
            return Snapshot(
                spec=p.spec,
                status=p.previous,
                secret=observed,
                rotate_request=rotate,
                jitter_key=p.uid,
                revoked_keys=self.keys.revoked_kids(),
            )

        snap = snapshot()
        decision = decide(snap, p.now)
        # A brand-new AgentToken (never issued, no Secret seen) skips the fresh read: a create
        # that finds a Secret answers 409, and we read it and decide again (SecretAppeared): one
        # call less per new token. Not for an issuer whose token binds to it (creates it first).
        brand_new = (
            p.previous.token_id is None
            and self.secrets.get(p.secret_key) is None
            and decision.action is Action.MINT
            and not self.issuing.binds_to_secret(p)
        )
        # Sharded, a Secret of a shard just taken over is not cached yet (controllers.leadership):
        # never judge an issued token by a Secret we have not seen.
        unseen = p.previous.token_id is not None and self.secrets.get(p.secret_key) is None
        if (decision.action not in (Action.NONE, Action.BACKOFF) and not brand_new) or unseen:
            await self.secrets.refresh(p.secret_key)
            snap = snapshot()
            decision = decide(snap, p.now)
        return snap, decision

    async def _add_finalizer(self, key: Key, body: dict[str, Any]) -> None:
        written = await self.revoker.add_finalizer(body)
        if written is None:
            return  # a newer version is on its way to us
        self.tokens.offer(key, written)
        body["metadata"] = written["metadata"]

    async def _write_status(
        self,
        body: dict[str, Any],
        previous: TokenStatus,
        spec: AgentTokenSpec | None,
        record: TokenRecord | None,
        outcome: Outcome,
        extra: dict[str, Any] | None = None,
    ) -> None:
        """The one status write of a pass, skipped when nothing would change."""
        meta = body["metadata"]
        status = render(
            previous=previous,
            generation=meta.get("generation"),
            spec=spec,
            record=record,
            jitter_key=meta["uid"],
            outcome=outcome,
            now=self.clock(),
        )
        status.update(extra or {"rollout": None, "consumers": None})
        current = body.get("status") or {}
        if not differs(current, status):
            return
        if not self.leadership.owns(meta["namespace"]):
            raise NotOwned
        stalled_before = {
            c.get("reason") for c in current.get("conditions", []) if c.get("type") == api.COND_STALLED
        }
        if outcome.stalled and outcome.stalled.reason not in stalled_before:
            self._post(body, [Event(True, outcome.stalled.reason, outcome.stalled.message)])
        key = (meta["namespace"], meta["name"])
        try:
            written = await self.kube.patch_agenttoken_status(*key, status)
        except KubeError as exc:
            if exc.not_found:  # deleted meanwhile; maybe unseen: a relist never reports a deletion
                if (self.tokens.get(key) or {}).get("metadata", {}).get("uid") == meta["uid"]:
                    self.on_token_event("DELETED", body)  # else no phantom renewing it forever
                return
            raise
        self.tokens.offer(key, written)
        metrics.observe_token(key, written)

    def _warn_if_expiring(
        self,
        body: dict[str, Any],
        key: Key,
        spec: AgentTokenSpec,
        record: TokenRecord | None,
        outcome: Outcome,
    ) -> None:
        fraction = self.options.expiry_warning_fraction
        warning = outcomes.expiry_warning(record, outcome, spec, fraction, self.clock())
        if warning is None or record is None or self._warned_expiry.get(key) == record.token_id:
            return
        self._warned_expiry[key] = record.token_id
        self._post(body, [warning])

    def _schedule_next(
        self,
        p: Pass,
        record: TokenRecord | None,
        decision: Decision,
        outcome: Outcome,
        wake: list[datetime.datetime],
    ) -> None:
        """The earliest of: the token's own next moment (core.outcome.next_wakeup), the rollout's
        and the usage policy's next steps."""
        now = self.clock()
        own = outcomes.next_wakeup(
            spec=p.spec, record=record, decision=decision, outcome=outcome, jitter_key=p.uid, now=now
        )
        times = [t for t in (own, *[max(w, now) for w in wake]) if t is not None]
        if times:
            self.queue.schedule(p.key, min(times))

    def _index_for_workloads(self, key: Key, spec: AgentTokenSpec) -> None:
        self._interest.put(key[0], key[1], spec.secret_name, spec.rollout)

    def _post(self, body: dict[str, Any], events: Iterable[Event]) -> None:
        for e in events:
            self.events.post(involved(body), warning=e.warning, reason=e.reason, message=e.message)

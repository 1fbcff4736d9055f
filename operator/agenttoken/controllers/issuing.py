"""Where a token is minted and delivered: issue through the issuer registry, check it
(spec.verify) before delivery, write it into the Secret; and repair a drifted Secret.

Fail safe: a new token reaches the Secret (and so any workload) only once minted and, with
spec.verify, accepted by the API it is for. Until then the old token stays in place. A token
that has not passed its check yet is held in memory only (never in the Secret, status or
anywhere else), so a retry re-checks the same token instead of minting another. Keyed by what
it was minted for; an operator restart loses it and the next attempt mints once more (nothing
was delivered either way).
"""

from __future__ import annotations

import dataclasses
import datetime
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agenttoken import api
from agenttoken.controllers import metrics
from agenttoken.controllers.context import Key, Pass
from agenttoken.controllers.probe import verify_new_token
from agenttoken.controllers.secrets import SecretRejected, SecretStore
from agenttoken.core import outcome as outcomes
from agenttoken.core.conditions import Reason
from agenttoken.core.outcome import Event, StepResult
from agenttoken.core.renewal import Action, Decision, Snapshot
from agenttoken.core.secretdata import TokenRecord, desired_secret, desired_secret_metadata
from agenttoken.core.status import Outcome
from agenttoken.core.templates import TemplateError
from agenttoken.core.times import format_time
from agenttoken.core.tokens import token_hash
from agenttoken.issuers import IssueContext, Issued, IssueError
from agenttoken.issuers.registry import Registry
from agenttoken.kube.adapter import Kube
from agenttoken.kube.errors import KubeError

Clock = Callable[[], datetime.datetime]


class VerificationFailed(Exception):
    """The new token did not pass spec.verify; the message never carries the token or a body."""


class NotOwned(Exception):
    """This replica no longer holds the AgentToken's shard (controllers.leadership): stop the pass."""


class Issuing:
    def __init__(
        self,
        kube: Kube,
        secrets: SecretStore,
        registry: Registry,
        clock: Clock,
        may_write: Callable[[str], bool] = lambda namespace: True,
    ) -> None:
        self.kube = kube
        self.may_write = may_write
        self.secrets = secrets
        self.registry = registry
        self.clock = clock
        self._held: dict[Key, tuple[tuple[str, str | None], Issued]] = {}

    def forget(self, key: Key) -> None:
        self._held.pop(key, None)

    def binds_to_secret(self, p: Pass) -> bool:
        return self.registry.adapter(p.issuer).binds_to_secret

    async def step(
        self, p: Pass, snap: Snapshot, decision: Decision, record: TokenRecord | None, outcome: Outcome
    ) -> tuple[TokenRecord | None, StepResult]:
        """Mint, repair, or report a conflict, as `decision` says; the token record to report after."""
        if decision.action is Action.CONFLICT:
            stalled = Reason(decision.reason, decision.message)
            return record, StepResult(dataclasses.replace(outcome, stalled=stalled))
        if decision.action is Action.MINT:
            return await self.mint(p, snap, decision, outcome)
        if decision.action is Action.REPAIR and record is not None and snap.secret.token:
            try:
                await self.write_secret(
                    p,
                    snap.secret.token,
                    record,
                    exists=True,
                    stale=snap.secret.stale_keys,
                    version=snap.secret.version,
                )
            except TemplateError as exc:
                return record, StepResult(
                    dataclasses.replace(outcome, stalled=outcomes.template_problem(exc))
                )
            except SecretRejected as exc:
                return record, StepResult(dataclasses.replace(outcome, stalled=outcomes.invalid_secret(exc)))
            return record, StepResult(
                outcome, events=(Event(False, api.REASON_SECRET_REPAIRED, decision.message),)
            )
        return record, StepResult(outcome)

    async def mint(
        self, p: Pass, snap: Snapshot, decision: Decision, outcome: Outcome
    ) -> tuple[TokenRecord | None, StepResult]:
        old = snap.secret.record if snap.secret.token_intact else None
        first = snap.status.token_id is None and old is None
        now = self.clock()
        if not self.may_write(p.namespace):
            raise NotOwned
        try:
            minted, verification = await self._minted_and_checked(p, snap, now)
            record = _record(p, snap, minted, old)
            if not self.may_write(p.namespace):
                raise NotOwned  # fenced while minting: deliver nothing (the new holder mints)
            await self.write_secret(
                p,
                minted.token,
                record,
                exists=snap.secret.exists,
                stale=snap.secret.stale_keys,
                version=snap.secret.version,
            )
            self._held.pop(p.key, None)
        except TemplateError as exc:
            self._held.pop(p.key, None)
            return old, StepResult(dataclasses.replace(outcome, stalled=outcomes.template_problem(exc)))
        except SecretRejected as exc:
            return old, StepResult(dataclasses.replace(outcome, stalled=outcomes.invalid_secret(exc)))
        except VerificationFailed as exc:
            return old, self._failed(
                outcome,
                snap,
                now,
                api.REASON_VERIFICATION_FAILED,
                f"{decision.message}: the new token failed verification: {exc}",
            )
        except (KubeError, RuntimeError, ValueError, IssueError) as exc:
            reason = outcomes.issue_failure_reason(first)
            return old, self._failed(outcome, snap, now, reason, f"{decision.message}: issuing failed: {exc}")
        metrics.RENEWALS.labels(result="success").inc()
        done = dataclasses.replace(
            outcome, failed_attempts=0, last_failure_time=None, failure=None, verification=verification
        )
        return record, StepResult(done, events=(outcomes.issued_event(first, decision, record),))

    def _failed(
        self, outcome: Outcome, snap: Snapshot, now: datetime.datetime, reason: str, message: str
    ) -> StepResult:
        attempts = snap.status.failed_attempts + 1
        metrics.RENEWALS.labels(result="failure").inc()
        suffix = "; not delivered" if reason == api.REASON_VERIFICATION_FAILED else ""
        event = Event(True, reason, f"{message} (attempt {attempts}){suffix}")
        failed = outcomes.failed_attempt(outcome, attempts=attempts, now=now, reason=reason, message=message)
        return StepResult(failed, events=(event,))

    async def _minted_and_checked(
        self, p: Pass, snap: Snapshot, now: datetime.datetime
    ) -> tuple[Issued, dict[str, Any] | None]:
        """A new token (or the one held for the same request), checked with spec.verify if set."""
        spec = p.spec
        held_for = (spec.claims_hash(), snap.rotate_request)
        minted = self._held_token(p.key, held_for, now) if spec.verify else None
        if minted is None:
            minted = await self._counted(p, self._issue(p, now))
        if spec.verify is None:
            return minted, None
        self._held[p.key] = (held_for, minted)
        result = await verify_new_token(self.kube, p.namespace, spec, minted.token)
        metrics.CONNECTIVITY_CHECKS.labels(result="success" if result.ok else "failure").inc()
        if not result.ok:
            raise VerificationFailed(result.message)
        return minted, {
            "tokenId": minted.token_id,
            "lastSuccessTime": format_time(self.clock()),
            "statusCode": result.status_code,
            "request": spec.verify.target,
        }

    async def _issue(self, p: Pass, now: datetime.datetime) -> Issued:
        ctx = IssueContext(
            request=p.spec.token_request(p.namespace, p.name, p.uid), secret_name=p.spec.secret_name
        )
        if self.binds_to_secret(p):
            secret = self.secrets.get(p.secret_key)
            if secret is None:
                # The token is bound to its Secret, so the Secret must exist first (metadata only).
                skeleton = desired_secret_metadata(namespace=p.namespace, name=p.name, uid=p.uid, spec=p.spec)
                secret = await self.secrets.create_skeleton(p.secret_key, skeleton)
            ctx = dataclasses.replace(ctx, secret_uid=secret["metadata"]["uid"])
        return await self.registry.issue(p.issuer, ctx, now)

    def _held_token(
        self, key: Key, held_for: tuple[str, str | None], now: datetime.datetime
    ) -> Issued | None:
        """The token minted for the same spec and rotate request, if at least half its life is left."""
        held = self._held.get(key)
        if held is None or held[0] != held_for:
            return None
        issued = held[1]
        if issued.expires_at - now < (issued.expires_at - issued.issued_at) / 2:
            return None
        return issued

    async def _counted(self, p: Pass, minting: Awaitable[Issued]) -> Issued:
        """Await a mint, counting it per issuer and result."""
        issuer = p.issuer
        started = time.perf_counter()
        labels = {
            "kind": issuer.kind,
            "namespace": issuer.namespace,
            "name": issuer.name,
            "type": issuer.type,
        }
        try:
            minted = await minting
        except BaseException:
            metrics.ISSUER_REQUESTS.labels(**labels, result="failure").inc()
            raise
        metrics.ISSUER_REQUESTS.labels(**labels, result="success").inc()
        metrics.ISSUER_REQUEST_DURATION.labels(type=issuer.type).observe(time.perf_counter() - started)
        return minted

    async def write_secret(
        self,
        p: Pass,
        token: str,
        record: TokenRecord,
        *,
        exists: bool,
        stale: tuple[str, ...] = (),
        version: str | None = None,
    ) -> None:
        desired = desired_secret(
            namespace=p.namespace,
            name=p.name,
            uid=p.uid,
            spec=p.spec,
            token=token,
            record=record,
            stale=stale,
        )
        await self.secrets.write(p.secret_key, desired, exists=exists, version=version)


def _record(p: Pass, snap: Snapshot, minted: Issued, old: TokenRecord | None) -> TokenRecord:
    """The record the Secret carries with the new token: which token, which revision, and its
    predecessor (revoked after the rollout)."""
    return TokenRecord(
        token_id=minted.token_id,
        token_hash=token_hash(minted.token),
        key_id=minted.key_id,
        revision=max(snap.status.revision, old.revision if old else 0) + 1,
        issued_at=minted.issued_at,
        expires_at=minted.expires_at,
        spec_hash=p.spec.claims_hash(),
        rotate_request=snap.rotate_request or (old.rotate_request if old else None),
        previous_token_id=old.token_id if old else None,
        previous_expires_at=old.expires_at if old else None,
    )

"""What status.rollout and status.consumers say, and which workloads to restart: pure.

From the token in the Secret, the workload cache and the previous report. The controller's
rollout step applies it: asks the restart queue for `restart`, posts `events` (warn-once marks
are its state), revokes the previous token when `revocation.due`.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agenttoken import api
from agenttoken.core.conditions import Reason
from agenttoken.core.model import AgentTokenSpec
from agenttoken.core.outcome import Event
from agenttoken.core.revocation import AfterRollout, after_rollout
from agenttoken.core.rollout import (
    Workload,
    WorkloadRef,
    annotation_key,
    needs_restart,
    select,
    summarize,
    target_status,
)
from agenttoken.core.secretdata import TokenRecord
from agenttoken.core.times import format_time, parse_time


@dataclass(frozen=True)
class RolloutReport:
    consumers: list[dict[str, Any]]
    targets: list[dict[str, Any]]
    state: str
    message: str
    restart: tuple[WorkloadRef, ...]  # targets whose pod template does not carry the token id yet
    reconciling: Reason | None = None
    stalled: Reason | None = None
    too_slow: bool = False  # the previous token expired before the rollout finished
    wake_at: datetime.datetime | None = None
    stranded: tuple[str, ...] = ()  # consumers that need a restart but will not get one
    revocation: AfterRollout = field(default_factory=lambda: AfterRollout(None, False, None))

    def status(self, spec: AgentTokenSpec, record: TokenRecord, revoked_id: str | None) -> dict[str, Any]:
        """status.rollout and status.consumers; `revoked_id` after this pass's revocation, if any."""
        pending = self.revocation.revoke_at and revoked_id != record.previous_token_id
        return {
            "rollout": {
                "strategy": spec.rollout.strategy,
                "tokenId": record.token_id,
                "state": self.state,
                "message": self.message,
                "targets": self.targets,
                "previousTokenId": record.previous_token_id,
                "revokeAt": format_time(self.revocation.revoke_at) if pending else None,
                "revokedTokenId": revoked_id,
            },
            "consumers": self.consumers,
        }


def consumers(
    workloads: Iterable[Workload], secret: str, restarted: set[tuple[str, str]]
) -> list[dict[str, Any]]:
    """status.consumers: every workload reading the Secret, how, and whether renewals restart it."""
    out = []
    for w in sorted(workloads, key=lambda w: (w.ref.kind, w.ref.name)):
        uses = w.consumes_secret(secret)
        if not uses:
            continue
        out.append(
            {
                "kind": w.ref.kind,
                "name": w.ref.name,
                "via": sorted({c.via + ("+subPath" if c.sub_path else "") for c in uses}),
                "needsRestart": any(c.needs_restart for c in uses),
                "restartedOnRenewal": (w.ref.kind, w.ref.name) in restarted,
            }
        )
    return out


def stranded(report: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
    """Consumers that read the token through env vars or subPath mounts but are not restarted."""
    return tuple(
        f"{c['kind']}/{c['name']}" for c in report if c["needsRestart"] and not c["restartedOnRenewal"]
    )


def stranded_event(names: tuple[str, ...], restart: bool) -> Event:
    why = (
        "spec.rollout.strategy is None"
        if not restart
        else "they are not rollout targets (add them to spec.rollout.targets or set autoDiscover)"
    )
    return Event(
        True,
        api.REASON_CONSUMER_NEEDS_RESTART,
        "consumers read the token through env vars or subPath mounts and will not see renewals "
        f"without a restart, but {why}: " + ", ".join(names),
    )


def too_slow_event(message: str) -> Event:
    return Event(
        True,
        api.REASON_ROLLOUT_TOO_SLOW,
        f"the previous token expired before the rollout finished ({message}); "
        "renewBefore is too short for these workloads",
    )


def _progress(
    state: str, message: str, record: TokenRecord, now: datetime.datetime
) -> tuple[Reason | None, Reason | None, bool, datetime.datetime | None]:
    """Reconciling or Stalled for the rollout's state; whether it is too slow (the previous
    token expired first); when to look again (the previous token's expiry)."""
    if state in ("Failed", "Paused"):
        reason = api.REASON_ROLLOUT_FAILED if state == "Failed" else api.REASON_ROLLOUT_PAUSED
        return None, Reason(reason, message), False, None
    if state != "RollingOut":
        return None, None, False, None
    if record.previous_expires_at and now >= record.previous_expires_at:
        slow = Reason(api.REASON_ROLLOUT_TOO_SLOW, f"{message}; the previous token already expired")
        return slow, None, True, None
    return Reason(api.REASON_ROLLING_OUT, message), None, False, record.previous_expires_at


def _still_rolling_out(
    previous: Mapping[str, Any], token_id: str, state: str, targets: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether the rollout of `token_id` was RollingOut and still is, over the same targets."""
    if not (previous.get("tokenId") == token_id and previous.get("state") == state == "RollingOut"):
        return False
    before = [(t.get("kind"), t.get("name")) for t in previous.get("targets") or []]
    return before == [(t["kind"], t["name"]) for t in targets]


def report(
    *,
    name: str,
    spec: AgentTokenSpec,
    record: TokenRecord,
    workloads: Sequence[Workload],
    previous: Mapping[str, Any],
    now: datetime.datetime,
) -> RolloutReport:
    """Where the rollout of the token in the Secret stands; `previous` is the last status.rollout."""
    key = annotation_key(name)
    restart = spec.rollout.strategy == "Restart"
    selected = select(spec.rollout, spec.secret_name, workloads) if restart else []
    report_ = consumers(workloads, spec.secret_name, {(w.ref.kind, w.ref.name) for w in selected})
    old = {(t.get("kind"), t.get("name")): t for t in previous.get("targets") or []}
    targets = [
        target_status(w, record.token_id, key, old.get((w.ref.kind, w.ref.name)), now) for w in selected
    ]
    to_restart = tuple(w.ref for w in selected if needs_restart(w, key, record.token_id))
    state, message = summarize(targets)
    if _still_rolling_out(previous, record.token_id, state, targets):
        # Status is written when the rollout's state changes, not at each progress step (a
        # Deployment reports several: observed, n of m updated, available...): the targets and
        # message stay as written until it completes, fails or pauses. Live progress is the
        # workload's own (`kubectl rollout status`). Saves 2-5 status writes per renewal.
        targets, message = list(previous.get("targets") or []), str(previous.get("message") or message)
    reconciling, stalled, slow, wake = _progress(state, message, record, now)
    # No Event here: the one RolloutComplete (or RolloutFailed) per target is posted on the
    # workload by the restart queue (controllers.rollout), and a failed or paused rollout sets
    # Stalled, whose Event the controller posts once.
    revocation = after_rollout(
        previous_token_id=record.previous_token_id,
        previous_expires_at=record.previous_expires_at,
        issued_at=record.issued_at,
        rollout_complete=state == "Complete",
        completed=[parse_time(t.get("completedAt")) for t in targets],
        grace=spec.rollout.grace,
        revoked_token_id=previous.get("revokedTokenId"),
        now=now,
    )
    if revocation.wake_at is not None:
        wake = min(wake or revocation.wake_at, revocation.wake_at)
    return RolloutReport(
        consumers=report_,
        targets=targets,
        state=state,
        message=message,
        restart=to_restart,
        reconciling=reconciling,
        stalled=stalled,
        too_slow=slow,
        wake_at=wake,
        stranded=stranded(report_),
        revocation=revocation,
    )

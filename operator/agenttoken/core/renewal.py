"""Does this AgentToken need a new token now? A chain of small pure checks, first match wins.

Modelled on cert-manager's re-issuance policy chain: each check looks at one snapshot (spec,
status, the observed Secret, the clock) and either passes or returns a reason and a message.
The reasons are the ones that appear in conditions and Events.

Actions:
- `MINT`    issue a new token and write it (the old one stays in place until then);
- `REPAIR`  the token in the Secret is good but other managed content drifted: rewrite it;
- `ADOPT`   the Secret holds a newer token than status knows (crash between the two writes):
            copy its record into status, mint nothing;
- `NONE`    nothing to do until `wake_at`;
- `BACKOFF` a mint is due but the last attempts failed: wait until `wake_at`;
- `CONFLICT` the Secret belongs to someone else: never overwrite it.
"""

from __future__ import annotations

import datetime
import enum
from collections.abc import Callable
from dataclasses import dataclass

from agenttoken import api
from agenttoken.core.model import AgentTokenSpec, TokenStatus
from agenttoken.core.secretdata import ObservedSecret, TokenRecord
from agenttoken.core.timing import next_retry_time, renewal_time


class Action(enum.Enum):
    NONE = "None"
    MINT = "Mint"
    REPAIR = "Repair"
    ADOPT = "Adopt"
    BACKOFF = "Backoff"
    CONFLICT = "Conflict"


# Reasons for minting, named for what the user did or what time did.
NO_TOKEN = "NoToken"
SECRET_MISSING = "SecretMissing"
TOKEN_ALTERED = "TokenAltered"
SPEC_CHANGED = "SpecChanged"
ROTATE_REQUESTED = api.REASON_ROTATE_REQUESTED
EXPIRED = api.REASON_EXPIRED
RENEWAL_DUE = "RenewalDue"
UP_TO_DATE = "UpToDate"
SUSPENDED = api.REASON_SUSPENDED
REVOKED = api.REASON_TOKEN_REVOKED
KEY_REVOKED = api.REASON_KEY_REVOKED


@dataclass(frozen=True)
class Snapshot:
    spec: AgentTokenSpec
    status: TokenStatus
    secret: ObservedSecret
    rotate_request: str | None  # current value of the agenttoken.dev/rotate annotation
    jitter_key: str  # stable per object (uid), so a restart computes the same renewal time
    # Kids of signing keys revoked in an emergency: a token one of them signed is re-minted now.
    revoked_keys: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    message: str
    wake_at: datetime.datetime | None = None
    # Set when the Secret's record is newer than status: status must take it over.
    adopt: TokenRecord | None = None

    @property
    def mints(self) -> bool:
        return self.action is Action.MINT


Check = Callable[[Snapshot, datetime.datetime], tuple[str, str] | None]


def current_record(snap: Snapshot) -> TokenRecord | None:
    """The record of the token actually in the Secret, if it is ours and intact."""
    s = snap.secret
    return s.record if s.exists and s.token_intact else None


def planned_renewal(snap: Snapshot, record: TokenRecord) -> datetime.datetime:
    return renewal_time(record.issued_at, record.expires_at, snap.spec.renewal, snap.jitter_key)


def _no_token(snap: Snapshot, now: datetime.datetime) -> tuple[str, str] | None:
    if not snap.secret.exists:
        if snap.status.token_id is None:
            return NO_TOKEN, "no token has been issued yet"
        return SECRET_MISSING, f"Secret {snap.spec.secret_name} is missing"
    return None


def _altered(snap: Snapshot, now: datetime.datetime) -> tuple[str, str] | None:
    if not snap.secret.token_intact:
        if snap.secret.record is None and snap.status.token_id is None:
            return NO_TOKEN, "no token has been issued yet"
        return TOKEN_ALTERED, f"key {snap.spec.keys.token!r} in Secret {snap.spec.secret_name} was altered"
    return None


def _revoked(snap: Snapshot, now: datetime.datetime) -> tuple[str, str] | None:
    record = current_record(snap)
    usage = snap.status.usage
    if record and usage and usage.revoked_token_id == record.token_id:
        return REVOKED, f"token {record.token_id} was revoked as unused and is consumed again"
    return None


def _key_revoked(snap: Snapshot, now: datetime.datetime) -> tuple[str, str] | None:
    record = current_record(snap)
    if record and record.key_id in snap.revoked_keys:
        return KEY_REVOKED, f"signing key {record.key_id} was revoked"
    return None


def _spec_changed(snap: Snapshot, now: datetime.datetime) -> tuple[str, str] | None:
    record = current_record(snap)
    if record and record.spec_hash != snap.spec.claims_hash():
        return SPEC_CHANGED, "the spec changed what the token must contain"
    return None


def _rotate_requested(snap: Snapshot, now: datetime.datetime) -> tuple[str, str] | None:
    record = current_record(snap)
    handled = record.rotate_request if record else snap.status.last_handled_rotate_request
    if snap.rotate_request and snap.rotate_request != handled:
        return ROTATE_REQUESTED, f"rotation requested ({api.ANN_ROTATE}={snap.rotate_request!r})"
    return None


def _expired(snap: Snapshot, now: datetime.datetime) -> tuple[str, str] | None:
    record = current_record(snap)
    if record and record.expires_at <= now:
        return EXPIRED, f"the token expired at {record.expires_at.isoformat()}"
    return None


def _renewal_due(snap: Snapshot, now: datetime.datetime) -> tuple[str, str] | None:
    record = current_record(snap)
    if record and planned_renewal(snap, record) <= now:
        return RENEWAL_DUE, "the renewal time has come"
    return None


CHAIN: tuple[Check, ...] = (
    _no_token,
    _altered,
    _revoked,
    _key_revoked,
    _spec_changed,
    _rotate_requested,
    _expired,
    _renewal_due,
)


def conflict_message(secret_name: str) -> str:
    """What works: spec.secret.name is immutable, so the remedies act on the Secret (the
    operator watches it and proceeds within seconds) or replace the AgentToken."""
    return (
        f"Secret {secret_name} exists and is not managed by this AgentToken, so nothing is written. "
        f"Delete that Secret; or hand it over with `kubectl label secret {secret_name} "
        f"{api.LABEL_MANAGED_BY}={api.OPERATOR_NAME}` (this AgentToken then owns it: its token keys "
        "are overwritten and it is deleted with the AgentToken); or recreate this AgentToken with "
        "another spec.secret.name (it is immutable). Either of the first two takes effect within seconds."
    )


def decide(snap: Snapshot, now: datetime.datetime) -> Decision:
    if snap.secret.foreign:
        return Decision(
            Action.CONFLICT,
            api.REASON_SECRET_CONFLICT,
            conflict_message(snap.spec.secret_name),
        )
    record = current_record(snap)
    adopt = record if record and record.token_id != snap.status.token_id else None
    if snap.spec.suspend:
        return Decision(
            Action.NONE,
            SUSPENDED,
            "renewal is suspended; the current token stays until it expires",
            adopt=adopt,
        )
    for check in CHAIN:
        hit = check(snap, now)
        if hit is None:
            continue
        reason, message = hit
        # An explicit rotate request or key revocation bypasses the backoff: a human asked for it now.
        if (
            reason not in (ROTATE_REQUESTED, KEY_REVOKED)
            and snap.status.failed_attempts
            and snap.status.last_failure_time
        ):
            expires = record.expires_at if record else None
            retry = next_retry_time(snap.status.last_failure_time, snap.status.failed_attempts, expires)
            if retry > now:
                return Decision(Action.BACKOFF, reason, message, wake_at=retry, adopt=adopt)
        return Decision(Action.MINT, reason, message, adopt=adopt)
    assert record is not None  # the chain mints whenever there is no intact record
    wake = planned_renewal(snap, record)
    if snap.secret.drift:
        return Decision(
            Action.REPAIR,
            api.REASON_SECRET_REPAIRED,
            "managed content of the Secret drifted: " + ", ".join(snap.secret.drift),
            wake_at=wake,
            adopt=adopt,
        )
    if adopt:
        return Decision(
            Action.ADOPT, UP_TO_DATE, "status adopted the token recorded in the Secret", wake, adopt
        )
    return Decision(Action.NONE, UP_TO_DATE, "the token is valid", wake_at=wake)

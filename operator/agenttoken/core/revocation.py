"""The revocation list: ids of tokens that must no longer be accepted, kept until they expire.

Tokens expire anyway, so an entry only needs to live until its `exp` (plus verifier leeway);
pruning by time keeps the list small at any scale. Pure: the adapter stores the documents.

Two shapes:

* `Revoked` entries and their JSON (`to_json`/`from_json`): what `agenttoken revoke` writes into
  the unsigned *pending* document (the CLI holds no signing key), and what the operator folds in.
* The signed list verifiers read (`ListPart`, `sign_part`): a JWS (compact) per part, signed
  with the issuer's current access-token key, `typ` REVOCATION_LIST_TYPE so it can never pass as
  an access token (the verifier demands TOKEN_TYPE there, and this typ here). Payload:

      {"iss": issuer, "iat": 1764470000, "next_update": 1764470600, "seq": 1764470000123,
       "part": 0, "parts": 4, "revoked": {"<jti>": <exp>, ...}}

  Only jti and exp: 50 bytes per UUID jti before base64 (67 after), so 20,000 live entries fill
  about 1.3 MB across PARTS objects (a ConfigMap holds at most 1 MiB). A jti's part is fixed by
  its hash (`part_of`), so an entry never moves between objects: a verifier that sees one part
  newer than another still sees every revocation. `seq` only grows (read-modify-write on the
  stored part, at least the time in ms), so verifiers can refuse a replayed older part.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Final

from joserfc import jws

from agenttoken.core.keys import SigningKey, jws_registry
from agenttoken.core.times import format_time, parse_time
from agenttoken_sdk.jose import REVOCATION_LIST_TYPE

LEEWAY = datetime.timedelta(minutes=5)


@dataclass(frozen=True, order=True)
class Revoked:
    token_id: str
    expires_at: datetime.datetime
    namespace: str
    name: str
    revoked_at: datetime.datetime
    reason: str = "Rotated"


def add(entries: Iterable[Revoked], new: Iterable[Revoked]) -> tuple[Revoked, ...]:
    by_id = {e.token_id: e for e in entries}
    for entry in new:
        by_id.setdefault(entry.token_id, entry)  # first revocation time wins
    return tuple(sorted(by_id.values(), key=lambda e: (e.expires_at, e.token_id)))


def prune(entries: Iterable[Revoked], now: datetime.datetime) -> tuple[Revoked, ...]:
    return tuple(e for e in entries if e.expires_at + LEEWAY > now)


def is_revoked(entries: Iterable[Revoked], token_id: str) -> bool:
    return any(e.token_id == token_id for e in entries)


def to_json(entries: Iterable[Revoked]) -> str:
    items = []
    for e in entries:
        item = asdict(e)
        item["expires_at"], item["revoked_at"] = format_time(e.expires_at), format_time(e.revoked_at)
        items.append({"jti": item.pop("token_id"), **{_camel(k): v for k, v in item.items()}})
    return json.dumps({"revoked": items}, sort_keys=True, separators=(",", ":"))


def from_json(text: str) -> tuple[Revoked, ...]:
    if not text:
        return ()
    out = []
    for item in json.loads(text).get("revoked", []):
        expires, revoked = parse_time(item.get("expiresAt")), parse_time(item.get("revokedAt"))
        if not item.get("jti") or expires is None or revoked is None:
            continue
        out.append(
            Revoked(
                token_id=item["jti"],
                expires_at=expires,
                namespace=item.get("namespace", ""),
                name=item.get("name", ""),
                revoked_at=revoked,
                reason=item.get("reason", "Rotated"),
            )
        )
    return tuple(out)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(p.title() for p in rest)


@dataclass(frozen=True)
class AfterRollout:
    """When the previous token is revoked after its successor rolled out (pure decision)."""

    revoke_at: datetime.datetime | None  # None: nothing to revoke (no predecessor, or it expires first)
    due: bool  # revoke it now
    wake_at: datetime.datetime | None  # look again then to revoke it


def after_rollout(
    *,
    previous_token_id: str | None,
    previous_expires_at: datetime.datetime | None,
    issued_at: datetime.datetime,
    rollout_complete: bool,
    completed: Iterable[datetime.datetime | None],
    grace: datetime.timedelta,
    revoked_token_id: str | None,
    now: datetime.datetime,
) -> AfterRollout:
    """The previous token is revoked `grace` after the last target finished its rollout (or after
    the new token was issued, without targets), unless it expires before that anyway: then
    nothing is revoked, and no wake-up or status write is spent on it (short-TTL tokens renew
    often; each write counts). Revoked once: `revoked_token_id` already names it."""
    if not (previous_token_id and previous_expires_at and rollout_complete):
        return AfterRollout(None, False, None)
    revoke_at = max([t for t in completed if t] + [issued_at]) + grace
    if revoke_at >= previous_expires_at:
        return AfterRollout(None, False, None)
    if revoked_token_id == previous_token_id:
        return AfterRollout(revoke_at, False, None)
    if now >= revoke_at:
        return AfterRollout(revoke_at, True, None)
    return AfterRollout(revoke_at, False, revoke_at)


# ---------------------------------------------------------------------------------- signed list

#: Parts of the signed list. Fixed: a jti's part is its hash modulo PARTS, and verifiers expect
#: every part; changing it moves entries between objects (see the module docstring).
PARTS: Final = 4
#: A part is refused (RevocationListFull) past this many bytes of signed document. A ConfigMap's
#: data may hold 1 MiB (1,048,576 bytes); the rest is headroom for the key name and metadata.
MAX_PART_BYTES: Final = 900 * 1024
#: How long a signed part is valid; the operator signs again when half of it is left, so an
#: outage of every operator pod is survived for at least VALIDITY / 2 plus the verifier's grace.
VALIDITY: Final = datetime.timedelta(minutes=10)


class RevocationListFull(RuntimeError):
    """Adding these revocations would push a part of the signed list past MAX_PART_BYTES."""

    def __init__(self, part: int, size: int, limit: int) -> None:
        super().__init__(
            f"revocation list part {part} would hold {size} bytes (limit {limit}); refusing the "
            "revocation rather than dropping one (see docs/sdk.md, revocation list limits)"
        )
        self.part = part
        self.size = size
        self.limit = limit


def part_of(token_id: str, parts: int = PARTS) -> int:
    """The part a token id lives in: stable across processes and versions (sha256, never hash())."""
    return int.from_bytes(hashlib.sha256(token_id.encode()).digest()[:8], "big") % parts


@dataclass(frozen=True)
class ListPart:
    """One part of the signed list: its entries (jti -> exp, POSIX seconds) and its validity."""

    part: int
    parts: int
    seq: int
    issued_at: int
    next_update: int
    revoked: Mapping[str, int] = field(default_factory=dict)
    kid: str | None = None  # the key that signed it (from the header), when read back

    def payload(self, issuer: str) -> dict[str, Any]:
        return {
            "iss": issuer,
            "iat": self.issued_at,
            "next_update": self.next_update,
            "seq": self.seq,
            "part": self.part,
            "parts": self.parts,
            "revoked": dict(sorted(self.revoked.items())),
        }


def empty_part(part: int, parts: int = PARTS) -> ListPart:
    return ListPart(part=part, parts=parts, seq=0, issued_at=0, next_update=0)


def next_part(
    current: ListPart,
    new: Iterable[Revoked],
    now: datetime.datetime,
    validity: datetime.timedelta = VALIDITY,
) -> ListPart:
    """`current` with `new` added (the entries of this part only), expired entries pruned, and a
    fresh validity: issued now, next update after `validity`, seq above the stored one."""
    horizon = (now - LEEWAY).timestamp()
    revoked = {jti: exp for jti, exp in current.revoked.items() if exp > horizon}
    for entry in new:
        if part_of(entry.token_id, current.parts) == current.part and entry.expires_at + LEEWAY > now:
            revoked.setdefault(entry.token_id, int(entry.expires_at.timestamp()))
    issued = int(now.timestamp())
    return ListPart(
        part=current.part,
        parts=current.parts,
        seq=max(current.seq + 1, int(now.timestamp() * 1000)),
        issued_at=issued,
        next_update=issued + int(validity.total_seconds()),
        revoked=revoked,
    )


def sign_part(part: ListPart, key: SigningKey, issuer: str, *, limit: int = MAX_PART_BYTES) -> str:
    """The part as a compact JWS signed by `key`; RevocationListFull when it would exceed `limit`."""
    header = {"alg": key.algorithm, "kid": key.kid, "typ": REVOCATION_LIST_TYPE}
    payload = json.dumps(part.payload(issuer), separators=(",", ":")).encode()
    signed: str = jws.serialize_compact(
        header, payload, key.joserfc_key, algorithms=[key.algorithm], registry=jws_registry([key.algorithm])
    )
    if len(signed) > limit:
        raise RevocationListFull(part.part, len(signed), limit)
    return signed


def read_part(signed: str) -> ListPart | None:
    """The part stored in the cluster, read back WITHOUT checking its signature: the operator
    reads its own namespace (whoever can write there can also read the signing keys); verifiers
    check the signature (agenttoken_sdk). None when it is not one of ours."""
    try:
        header_b64, payload_b64, _ = signed.split(".")
        header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
        doc = json.loads(base64.urlsafe_b64decode(payload_b64 + "=" * (-len(payload_b64) % 4)))
        if header.get("typ") != REVOCATION_LIST_TYPE or not isinstance(doc.get("revoked"), dict):
            return None
        return ListPart(
            part=int(doc["part"]),
            parts=int(doc["parts"]),
            seq=int(doc["seq"]),
            issued_at=int(doc["iat"]),
            next_update=int(doc["next_update"]),
            revoked={str(k): int(v) for k, v in doc["revoked"].items()},
            kid=header.get("kid"),
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        return None


def needs_signing(
    part: ListPart | None, kid: str, now: datetime.datetime, validity: datetime.timedelta = VALIDITY
) -> bool:
    """Sign again when the part is missing, has half its validity or less left, or was signed by
    another key than the current one (rotation, emergency key revocation)."""
    if part is None or part.kid != kid:
        return True
    return part.next_update - now.timestamp() <= validity.total_seconds() / 2

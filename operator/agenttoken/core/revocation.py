"""The revocation list: ids of tokens that must no longer be accepted, kept until they expire.

Tokens expire anyway, so an entry only needs to live until its `exp` (plus verifier leeway);
pruning by time keeps the list small at any scale. Pure: the adapter stores the JSON.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from agenttoken.core.times import format_time, parse_time

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

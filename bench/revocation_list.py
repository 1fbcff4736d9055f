"""Revocation list size benchmark: bytes per entry, entries per part, the 20,000 goal, verify cost.

    .venv/bin/python bench/revocation_list.py

Pure (no cluster): signs the parts exactly as the operator does (core.revocation) with UUID token
ids, and checks them with the SDK verifier. Writes bench/results/revocation-list.json.
Goal ([security] #16): 20,000 live revocations within the bound (each part <= MAX_PART_BYTES).
"""

from __future__ import annotations

import datetime
import json
import time
import uuid
from typing import Any

from agenttoken.core import revocation
from agenttoken.core.keys import KeyRing, generate_key
from agenttoken.core.revocation import RevocationListFull, Revoked
from agenttoken.core.tokens import TokenRequest, mint
from agenttoken_sdk.verify import VerificationError, Verifier
from benchsupport import header, write

ISSUER = "https://bench.invalid/issuers/builtin"


def entries(count: int, now: datetime.datetime) -> list[Revoked]:
    exp = now + datetime.timedelta(hours=1)
    return [Revoked(str(uuid.uuid4()), exp, "bench", "agent", now, "Revoked") for _ in range(count)]


def part_capacity(key: Any, now: datetime.datetime) -> int:
    """How many UUID entries one part holds before sign_part refuses it (bisection)."""
    pool = revocation.next_part(revocation.empty_part(0), entries(80_000, now), now)
    items = list(pool.revoked.items())
    low, high = 0, len(items)
    while low < high:
        mid = (low + high + 1) // 2
        try:
            revocation.sign_part(
                revocation.ListPart(0, revocation.PARTS, 1, 1, 2, dict(items[:mid])), key, ISSUER
            )
            low = mid
        except RevocationListFull:
            high = mid - 1
    return low


def main() -> int:
    now = datetime.datetime.now(datetime.UTC)
    key = generate_key("ES256", now)
    results: dict[str, Any] = header("revocation-list")
    results["goal"] = {"live_revocations": 20_000, "max_part_bytes": revocation.MAX_PART_BYTES}
    live = entries(20_000, now)
    parts = [revocation.next_part(revocation.empty_part(i), live, now) for i in range(revocation.PARTS)]
    signed = [revocation.sign_part(p, key, ISSUER) for p in parts]
    sizes = [len(s) for s in signed]
    document = json.dumps({"lists": signed}).encode()
    verifier = Verifier(
        issuer=ISSUER,
        audience="a",
        jwks=KeyRing((key,)).jwks(now),
        revocations_url="bench",
        fetch=lambda url: document,
        audit=False,
    )
    request = TokenRequest(
        namespace="bench", name="agent", uid="u", subject=None, audience=("a",), scopes=(),
        ttl=datetime.timedelta(hours=1),
    )  # fmt: skip
    victim = mint(request, key, issuer=ISSUER, now=now, jti=live[0].token_id).token
    started = time.process_time()
    check = None
    try:  # the first verification fetches and checks the whole list
        verifier.verify(victim)
    except VerificationError as exc:
        check = exc.check
    if check != "revoked":
        raise SystemExit(f"a revoked token was not rejected as revoked ({check})")
    verify_seconds = time.process_time() - started
    capacity = part_capacity(key, now)
    results["twenty_thousand"] = {
        "parts": revocation.PARTS,
        "entries_per_part": [len(p.revoked) for p in parts],
        "part_bytes": sizes,
        "total_bytes": sum(sizes),
        "bytes_per_entry": round(sum(sizes) / 20_000, 1),
        "verifier_check_cpu_seconds": round(verify_seconds, 4),
    }
    results["bound"] = {
        "max_part_bytes": revocation.MAX_PART_BYTES,
        "uuid_entries_per_part": capacity,
        "uuid_entries_all_parts_nominal": capacity * revocation.PARTS,
    }
    results["goals"] = {"twenty_thousand_within_bound": max(sizes) <= revocation.MAX_PART_BYTES}
    write("revocation-list", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

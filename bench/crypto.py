"""Crypto benchmark: mint and verify throughput on one core, per algorithm.

    .venv/bin/python bench/crypto.py [--seconds 3]

Rates are per CPU-second of the benchmark process (time.process_time), so other load on the
shared core does not count against them. Writes bench/results/crypto.json.
Goal ([measure]): mint >= 10k/s, verify >= 5k/s per core.
"""

from __future__ import annotations

import argparse
import datetime
import os
import time
from typing import Any

from agenttoken.core.keys import KeyRing, generate_key
from agenttoken.core.tokens import TokenRequest, mint
from agenttoken_sdk.verify import Verifier
from benchsupport import header, write

ISSUER = "https://bench.invalid/issuers/builtin"


def rate(fn: Any, seconds: float) -> float:
    """Operations per CPU-second of this process: on a shared machine the pinned core also runs
    other work, and wall-clock time would count that against us; the goal is per core."""
    count, start = 0, time.process_time()
    deadline = start + seconds
    while time.process_time() < deadline:
        for _ in range(50):
            fn()
        count += 50
    return count / (time.process_time() - start)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the goal is per core
    now = datetime.datetime.now(datetime.UTC)
    request = TokenRequest(
        namespace="bench",
        name="agent",
        uid="00000000-0000-0000-0000-000000000000",
        subject=None,
        audience=("https://api.example.com",),
        scopes=("tickets:read", "tickets:comment"),
        ttl=datetime.timedelta(hours=1),
    )
    results: dict[str, Any] = header("crypto", seconds=args.seconds, cores_used=1)
    results["goal"] = {"mint_per_s": 10000, "verify_per_s": 5000}
    results["algorithms"] = {}
    for alg in ("ES256", "EdDSA", "RS256"):
        key = generate_key(alg, now)
        ring = KeyRing(keys=(key,))
        token = mint(request, key, issuer=ISSUER, now=now).token
        verifier = Verifier(issuer=ISSUER, audience="https://api.example.com", jwks=ring.jwks(now))
        verifier.verify(token)
        results["algorithms"][alg] = {
            "mint_per_s": round(
                rate(lambda key=key: mint(request, key, issuer=ISSUER, now=now), args.seconds)
            ),
            "verify_per_s": round(
                rate(lambda verifier=verifier, token=token: verifier.verify(token), args.seconds)
            ),
        }
    default = results["algorithms"]["ES256"]
    results["goals"] = {
        "mint_ge_10k_per_s_es256": default["mint_per_s"] >= 10000,
        "verify_ge_5k_per_s_es256": default["verify_per_s"] >= 5000,
    }
    write("crypto", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

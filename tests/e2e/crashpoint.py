"""Runs the operator (`python crashpoint.py run ...`) with a crash point injected by the test
harness, never by the operator itself: AGENTTOKEN_TEST_CRASH=<point>:<marker file> makes the
process die like kill -9, once (the marker file records that it did).

Points:
- `after-secret-write`: right after a Secret write with a token succeeded (the Secret holds the
  new token), before status or any workload patch.
- `after-key-ring-write`: right after the key-ring Secret was written (e.g. an emergency key
  revocation stored), before the JWKS is published, hooks run or any token is re-issued.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from agenttoken.controllers.keys import KeyManager
from agenttoken.controllers.secrets import SecretStore

POINTS = {"after-secret-write": (SecretStore, "write"), "after-key-ring-write": (KeyManager, "_store")}


def _die_once(point: str, marker: str) -> None:
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(point)
        os._exit(137)


def _crash_after(
    method: Callable[..., Awaitable[Any]], point: str, marker: str
) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(method)
    async def crashing(*args: Any, **kwargs: Any) -> Any:
        result = await method(*args, **kwargs)
        _die_once(point, marker)
        return result

    return crashing


def install(spec: str) -> None:
    point, _, marker = spec.partition(":")
    if point not in POINTS or not marker:
        raise SystemExit(f"unknown crash point {spec!r}; known: {', '.join(POINTS)}")
    owner, name = POINTS[point]
    setattr(owner, name, _crash_after(getattr(owner, name), point, marker))


if __name__ == "__main__":
    install(os.environ["AGENTTOKEN_TEST_CRASH"])
    from agenttoken.cli import main

    sys.exit(main(sys.argv[1:]))

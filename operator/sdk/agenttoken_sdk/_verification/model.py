"""The public types of verification, and the failure of one check."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, NamedTuple

#: Every check Verifier.verify() performs, in the order it performs them.
CHECKS: Final = (
    "format",
    "alg",
    "kid",
    "signature",
    "typ",
    "iss",
    "aud",
    "exp",
    "nbf",
    "scope",
    "revoked",
    "env",
    "cidr",
)


class VerificationError(ValueError):
    """A token was rejected. `check` is one of CHECKS; the message never contains the token."""

    def __init__(self, check: str, reason: str) -> None:
        self.check = check
        self.reason = reason
        super().__init__(f"token rejected: {check}: {reason}")


class Failure(NamedTuple):
    """The check that failed (one of CHECKS) and why; becomes a VerificationError."""

    check: str
    reason: str

    def error(self) -> VerificationError:
        return VerificationError(self.check, self.reason)


@dataclass(frozen=True)
class Claims:
    """The verified claims of a token, typed. `raw` is a copy of the whole claim set."""

    subject: str
    client_id: str
    audience: tuple[str, ...]
    scopes: tuple[str, ...]
    token_id: str
    issued_at: datetime
    expires_at: datetime
    environment: str | None
    cidrs: tuple[str, ...]
    namespace: str | None
    name: str | None
    uid: str | None
    raw: dict[str, Any] = field(repr=False, compare=False, hash=False)


def short(value: object) -> str:
    """repr(value), shortened: for attacker-controlled values (kids, addresses) in messages."""
    text = repr(value)
    return text if len(text) <= 66 else text[:63] + "..."

"""RFC 3339 timestamps as the operator writes them (UTC, second precision, trailing Z)."""

from __future__ import annotations

import datetime
from typing import Any

__all__ = ["now_utc", "parse_time"]


def now_utc() -> datetime.datetime:
    """The current time, timezone-aware (the default clock of TokenSource and Verifier)."""
    return datetime.datetime.now(datetime.UTC)


def parse_time(value: Any) -> datetime.datetime | None:
    """An aware datetime (naive input is read as UTC), or None when value is not an RFC 3339 time."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.UTC)

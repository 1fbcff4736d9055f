"""RFC 3339 timestamps as Kubernetes writes them (UTC, second precision, trailing Z)."""

from __future__ import annotations

import datetime

from agenttoken_sdk.times import parse_time

__all__ = ["format_time", "parse_time"]


def format_time(value: datetime.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""Events bounded in a burst: what one aggregated Event says for many alike (pure).

Alike = same namespace, reason, type and kind of object. The recorder (kube.events) collects them
for a short window and posts one Event for the lot, the way the apiserver's own EventSeries
counts repeats: a burst of 1,000 new AgentTokens in one namespace is a handful of Events, not
1,000 writes. A lone Event is posted unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NAMES_SHOWN = 10  # names listed in an aggregated message; the rest are counted
MESSAGE_LIMIT = 1024  # what the adapter keeps of a message


@dataclass
class Batch:
    """Events alike, in arrival order: the first few kept whole, the others only counted."""

    first: tuple[dict[str, Any], str]  # (involved, message) of the first one
    names: list[str] = field(default_factory=list)
    count: int = 0

    def add(self, involved: dict[str, Any]) -> None:
        self.count += 1
        if len(self.names) < NAMES_SHOWN and involved["name"] not in self.names:
            self.names.append(involved["name"])


def key(involved: dict[str, Any], warning: bool, reason: str) -> tuple[str, str, bool, str]:
    return (involved["namespace"], reason, warning, involved["kind"])


def start(involved: dict[str, Any], message: str) -> Batch:
    batch = Batch(first=(involved, message))
    batch.add(involved)
    return batch


def summary(batch: Batch, reason: str) -> tuple[dict[str, Any], str, int]:
    """(involved object, message, count) of the one Event that stands for `batch`. It is filed
    under the first object (so `kubectl describe` of that one shows it, and `kubectl get events`
    in the namespace shows the lot), names up to NAMES_SHOWN of them and counts the rest, and
    quotes the first message as an example."""
    involved, message = batch.first
    if batch.count == 1:
        return involved, message, 1
    more = batch.count - len(batch.names)
    names = ", ".join(batch.names) + (f" and {more} more" if more > 0 else "")
    text = f"{reason} for {batch.count} {involved['kind']}s: {names}; the first: {message}"
    return involved, text[:MESSAGE_LIMIT], batch.count

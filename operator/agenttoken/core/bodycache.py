"""Latest object bodies by key, ordered by resourceVersion (pure, no I/O).

Watch events and the responses to our own writes both feed the cache, and they race: a write's
response can arrive after the watch already reported a later change, including a DELETED event
for a Secret that only left our label selector because someone relabelled it. A body older than
what we know must never win, and a deletion is remembered with its resourceVersion (a
tombstone), so a late write response cannot bring back a stale copy. Without the tombstone the
controller would trust that copy, decide nothing is wrong, and, for a Secret outside the label
selector, never hear about it again.

Held for every AgentToken and Secret, these bodies are most of the operator's memory at 10k
objects, so what is stored is slimmed (see `slim`).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]


def resource_version(body: Mapping[str, Any] | None) -> int | None:
    """etcd resourceVersions are integers; where they are not, ordering is not attempted."""
    try:
        return int((body or {}).get("metadata", {}).get("resourceVersion", ""))
    except (TypeError, ValueError):
        return None


_UNREAD_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def _compact(value: Any) -> Any:
    """A copy in which keys and short strings are interned: 10k bodies parsed from JSON each
    carry their own copies of "metadata", "conditions", "True", label keys... (~40 % of a body)."""
    if isinstance(value, dict):
        return {sys.intern(k): _compact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_compact(v) for v in value]
    if isinstance(value, str) and len(value) <= 64:
        return sys.intern(value)
    return value


def slim(body: dict[str, Any]) -> dict[str, Any]:
    """The body to hold, without what no decision reads: managedFields (more than half of an
    AgentToken's size) and kubectl's last-applied copy of the whole object, and compacted. A
    copy: the caller's body stays as it was."""
    meta = body.get("metadata")
    if not isinstance(meta, dict):
        return body
    kept = {k: v for k, v in meta.items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and any(a in annotations for a in _UNREAD_ANNOTATIONS):
        kept["annotations"] = {k: v for k, v in annotations.items() if k not in _UNREAD_ANNOTATIONS}
    compact: dict[str, Any] = _compact({**body, "metadata": kept})
    return compact


class BodyCache:
    def __init__(self) -> None:
        self.bodies: dict[Key, dict[str, Any]] = {}
        self._gone: dict[Key, int] = {}

    def offer(self, key: Key, body: dict[str, Any]) -> bool:
        """Store `body` unless we know a newer state (a body or a deletion); True if stored."""
        return self._take(key, body, same_version=False)

    def replace(self, key: Key, body: dict[str, Any]) -> bool:
        """A fresh read from the API: the state as of its resourceVersion; True if stored.

        A watch event handled while the read was in flight can be newer than the read, e.g. the
        DELETED of a Secret that a foreign write took out of our label selector. Then the read is
        stale and must not win: two reconciles read the same Secret (an AgentToken in conflict
        with its owner reads it too), and a stale copy from before the foreign write would look
        fine to the owner, which would never hear of that Secret again. A read at the
        tombstone's own version is the truth about it (the Secret as it left the selector)."""
        return self._take(key, body, same_version=True)

    def _take(self, key: Key, body: dict[str, Any], *, same_version: bool) -> bool:
        """Store `body` unless we know a newer state; `same_version`: also at the version we know."""
        new = resource_version(body)
        if new is not None:
            known = [
                v for v in (self._gone.get(key), resource_version(self.bodies.get(key))) if v is not None
            ]
            if any(new < v or (new == v and not same_version) for v in known):
                return False
        self.bodies[key] = slim(body)
        self._gone.pop(key, None)
        return True

    def get(self, key: Key) -> dict[str, Any] | None:
        return self.bodies.get(key)

    def drop(self, key: Key, deleted: Mapping[str, Any] | None = None) -> None:
        """Forget `key`; given the DELETED event's body, also refuse anything not newer than it."""
        self.bodies.pop(key, None)
        rv = resource_version(deleted)
        if rv is not None:
            self._gone[key] = max(rv, self._gone.get(key, rv))

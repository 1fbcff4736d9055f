"""An informer's bookkeeping: what it has delivered, where to resume, and what a relist says is
gone (pure, no I/O; kube.informer does the reading).

A watch resumes from the resourceVersion of the last event it saw (a BOOKMARK moves it on with no
object), so a reconnect or the apiserver's timeout loses nothing. When that version has been
compacted away (410 Gone) the state is listed again, and a relist shows only what exists: what
left the watch in the gap (deleted, or moved out of the label selector by a foreign write) is
simply absent. client-go's informers turn that into a deletion (`DeletedFinalStateUnknown`);
kopf never did, which is why `core.relist` had to guess from quiet periods. Here the diff is
exact: `end_listing` names every key delivered before that the listing did not contain.

Only keys and resourceVersions are kept (~200 bytes per object, the strings interned like the
held bodies' in core.bodycache): the consumers hold the bodies, and `final_state` builds the
DELETED body from the consumer's last copy when there is one.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

Key = tuple[str, str]  # (namespace or "", name)

INITIAL_EVENTS_END = "k8s.io/initial-events-end"


def key_of(body: Mapping[str, Any]) -> Key:
    meta = body.get("metadata") or {}
    return sys.intern(str(meta.get("namespace") or "")), sys.intern(str(meta.get("name") or ""))


def version_of(body: Mapping[str, Any]) -> str | None:
    version = (body.get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


def ends_initial_events(body: Mapping[str, Any]) -> bool:
    """The BOOKMARK that closes a streamed initial state (WatchList, `sendInitialEvents`)."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    return annotations.get(INITIAL_EVENTS_END) == "true"


def final_state(key: Key, last: Mapping[str, Any] | None, version: str) -> dict[str, Any]:
    """The body of a DELETED a relist implies: the last copy known (owner labels, annotations:
    whoever hears of the deletion may need them), at the listing's resourceVersion. At that
    version the object was not there, so a consumer's tombstone at it (core.bodycache) refuses
    any older copy, e.g. a late response to our own write from before it left."""
    body = dict(last or {})
    meta = dict(body.get("metadata") or {})
    namespace, name = key
    if namespace:
        meta["namespace"] = namespace
    meta["name"] = name
    meta["resourceVersion"] = version
    body["metadata"] = meta
    return body


class Delivered:
    """Keys delivered and the resourceVersion to resume from; a listing under way, if any."""

    def __init__(self) -> None:
        self.versions: dict[Key, str | None] = {}  # key -> resourceVersion last delivered
        self.resume: str | None = None  # None: the state must be listed (first, or after 410)
        self.listings = 0  # listings completed (the first one is the initial state)
        self._listed: set[Key] | None = None

    @property
    def listing(self) -> bool:
        return self._listed is not None

    def begin_listing(self) -> None:
        """A listing starts (again): what an interrupted one reported no longer counts."""
        self._listed = set()
        self.resume = None

    def event(self, event_type: str, body: Mapping[str, Any]) -> Key | None:
        """A delivered event. Objects of a listing come in no resourceVersion order, so only its
        end (`end_listing`) gives the version to resume from; a watch event's is in order."""
        version = version_of(body)
        if event_type == "BOOKMARK":
            if not self.listing and version:
                self.resume = version
            return None
        key = key_of(body)
        if event_type == "DELETED":
            self.versions.pop(key, None)
        else:
            self.versions[key] = version
        if self._listed is not None:
            self._listed.add(key)  # a deletion during a streamed listing is reported too
        elif version:
            self.resume = version
        return key

    def end_listing(self, version: str) -> list[Key]:
        """The listing is complete as of `version`: the keys delivered before that it did not
        contain, now forgotten (deliver each as DELETED); the watch resumes from `version`."""
        listed = self._listed if self._listed is not None else set()
        gone = [key for key in self.versions if key not in listed]
        for key in gone:
            del self.versions[key]
        self._listed = None
        self.resume = version
        self.listings += 1
        return gone

    def expired(self) -> None:
        """410 Gone: the resume version was compacted away; the next step is a listing."""
        self.resume = None
        self._listed = None

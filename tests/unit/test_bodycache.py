"""The controller's cache of watched bodies: ordering by resourceVersion and deletion tombstones."""

from __future__ import annotations

from typing import Any

from agenttoken.core.bodycache import BodyCache

KEY = ("ns", "tok")


def body(rv: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": "tok", "resourceVersion": rv, "labels": labels}}


def test_older_bodies_never_replace_newer_ones() -> None:
    cache = BodyCache()
    assert cache.offer(KEY, body("10"))
    assert not cache.offer(KEY, body("9"))
    assert not cache.offer(KEY, body("10"))
    assert cache.offer(KEY, body("11"))
    assert cache.get(KEY) == body("11")


def test_a_late_write_response_cannot_revive_what_a_deletion_event_removed() -> None:
    # Our write answered with rv 10; the watch already reported rv 11, where the Secret left our
    # label selector (DELETED). The response, processed afterwards, must not come back as current.
    cache = BodyCache()
    cache.offer(KEY, body("9"))
    cache.drop(KEY, body("11", owner="us"))
    assert not cache.offer(KEY, body("10", owner="us"))
    assert cache.get(KEY) is None
    assert cache.offer(KEY, body("12"))  # back in the selector, newer: taken
    assert cache.get(KEY) == body("12")
    assert not cache.offer(KEY, body("11"))


def test_a_fresh_read_is_the_truth_and_clears_the_tombstone() -> None:
    cache = BodyCache()
    cache.drop(KEY, body("20"))
    cache.replace(KEY, body("21"))
    assert cache.get(KEY) == body("21")
    cache.drop(KEY)  # a read found nothing: forget without a version
    assert cache.get(KEY) is None
    assert cache.offer(KEY, body("5"))  # a recreated object starts anew


def test_a_read_older_than_what_the_watch_already_reported_is_stale() -> None:
    # The conflicting AgentToken's read answered with rv 30 (the Secret as the owner had just
    # repaired it); the watch meanwhile reported rv 31, where a foreign write took it out of
    # our selector. The late read must not bring back the repaired copy.
    cache = BodyCache()
    cache.drop(KEY, body("31", owner="us"))
    assert not cache.replace(KEY, body("30", owner="us"))
    assert cache.get(KEY) is None
    assert cache.replace(KEY, body("31", owner="someone-else"))  # the read of the exit itself
    assert cache.get(KEY) == body("31", owner="someone-else")
    cache.offer(KEY, body("40"))
    assert not cache.replace(KEY, body("39"))
    assert cache.replace(KEY, body("40"))
    assert cache.get(KEY) == body("40")


def test_unordered_versions_are_always_taken() -> None:
    cache = BodyCache()
    cache.offer(KEY, body("abc"))
    assert cache.offer(KEY, body("abb"))
    cache.drop(KEY, body("zzz"))
    assert cache.offer(KEY, body("aaa"))

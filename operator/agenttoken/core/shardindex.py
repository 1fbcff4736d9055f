"""What a sharded replica keeps of the AgentTokens of shards it does not hold: their names, by
namespace, and nothing else (pure, no I/O).

Why names and not bodies: a body (slimmed) is ~2-9 KB and every replica would hold every one
(the AgentToken watch is cluster-wide); a name is ~100 bytes. Why not nothing: a takeover must
find the shard's AgentTokens, and the apiserver cannot select them by shard (the shard is a hash
of the namespace), so without this it would have to LIST every AgentToken of the cluster. With
it, a takeover LISTs the namespaces named here, each once (controllers.takeover).

Complete: every AgentToken that exists passed the watch (the initial listing, a relist, or an
ADDED event) and so is named here or held as a body. It may name too much (a relist does not
report deletions): a LIST of a namespace with nothing left costs one empty answer, and a takeover
starts the shard's entry afresh. Why names rather than namespaces alone: a DELETED event can then
clean up, and a namespace whose last AgentToken went is not listed at the next takeover.
"""

from __future__ import annotations

from collections.abc import Iterable

from agenttoken.core.lease import shard_of

Key = tuple[str, str]  # (namespace, name)


class ShardIndex:
    def __init__(self, shards: int) -> None:
        self.shards = shards
        self._names: dict[int, dict[str, set[str]]] = {}  # shard -> namespace -> names

    def add(self, key: Key) -> None:
        namespace, name = key
        self._names.setdefault(shard_of(namespace, self.shards), {}).setdefault(namespace, set()).add(name)

    def add_all(self, keys: Iterable[Key]) -> None:
        for key in keys:
            self.add(key)

    def remove(self, key: Key) -> None:
        namespace, name = key
        shard = shard_of(namespace, self.shards)
        by_namespace = self._names.get(shard, {})
        names = by_namespace.get(namespace)
        if names is None:
            return
        names.discard(name)
        if not names:
            del by_namespace[namespace]
        if not by_namespace:
            self._names.pop(shard, None)

    def take(self, shard: int) -> dict[str, set[str]]:
        """The shard's namespaces and names, removed: the shard is held now (its bodies are kept)."""
        return self._names.pop(shard, {})

    def namespaces(self, shard: int) -> set[str]:
        return set(self._names.get(shard, {}))

    def __len__(self) -> int:
        return sum(len(names) for by_ns in self._names.values() for names in by_ns.values())

"""Which AgentTokens to look at again when something outside them changed: a shard of the
leadership was gained or lost (controllers.leadership), or signing keys were revoked
(controllers.keys). Both answer from the warm caches, with no LIST: a takeover must be quick."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agenttoken.controllers import metrics
from agenttoken.controllers.context import Key
from agenttoken.controllers.issuer import Issuers, Reconcile
from agenttoken.controllers.queue import WorkQueue
from agenttoken.controllers.secrets import SecretStore
from agenttoken.core.bodycache import BodyCache
from agenttoken.core.lease import shard_of


def signed_by(kids: frozenset[str], secrets: SecretStore, tokens: BodyCache) -> set[Key]:
    """AgentTokens whose current token one of `kids` signed. Status and the Secret's record both
    say which key signed; either may lag the other, so both are asked."""
    affected = secrets.owners_signed_by(kids)
    affected.update(k for k, b in tokens.bodies.items() if (b.get("status") or {}).get("keyId") in kids)
    return {key for key in affected if tokens.get(key) is not None}


def shard_changed(
    shard: int,
    held: bool,
    shards: int,
    *,
    tokens: BodyCache,
    secrets: SecretStore,
    queue: WorkQueue,
    enqueue: Callable[[Key, dict[str, Any]], None],
    issuers: Issuers | None = None,
    reconcile_issuer: Reconcile | None = None,
) -> None:
    """Gained: queue the shard's AgentTokens from the warm cache, each at its recorded renewal
    time if overdue, like the initial listing, and look again at its issuers' status (the last
    holder may have died between an issuer's change and its status write). Lost: schedule none
    of them, and (sharded) keep none of their Secrets: another replica's tokens are not held here."""
    if held and issuers is not None and reconcile_issuer is not None:
        issuers.resync(shard, shards, reconcile_issuer)
    for key in [k for k in list(tokens.bodies) if shard_of(k[0], shards) == shard]:
        body = tokens.get(key)
        if held and body is not None:
            enqueue(key, body)
        elif not held:
            queue.forget(key)
            metrics.forget(key)
    if not held and shards > 1:
        secrets.forget_where(lambda key: shard_of(key[0], shards) == shard)

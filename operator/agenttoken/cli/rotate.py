"""`agenttoken rotate` (a new token now) and `agenttoken revoke` (onto the revocation list)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
import time
from typing import TYPE_CHECKING, Any

from agenttoken import api
from agenttoken.cli.options import common
from agenttoken.cli.session import FIELD_MANAGER, CliError, Session
from agenttoken.controllers.revocation import PENDING_CONFIGMAP, next_pending, part_configmap, stored_part
from agenttoken.core import revocation
from agenttoken.core.times import parse_time
from agenttoken.kube.errors import KubeError
from agenttoken.kube.retry import ConflictRetriesExhausted, retry_on_conflict

if TYPE_CHECKING:
    from agenttoken.cli.options import Subparsers

# A revoked token whose expiry is unknown stays listed for the longest lifetime we issue.
UNKNOWN_EXPIRY = datetime.timedelta(hours=168)


def register(sub: Subparsers) -> None:
    rotate = sub.add_parser("rotate", help="ask for a new token now (bypasses backoff)")
    rotate.add_argument("name", nargs="?")
    rotate.add_argument("--all", action="store_true", help="every AgentToken in the namespace (or -A)")
    common(rotate, listing=True, output=False)
    rotate.set_defaults(func=cmd_rotate)

    revoke = sub.add_parser("revoke", help="put a token id on the revocation list (effective immediately)")
    revoke.add_argument("name")
    revoke.add_argument("--token-id", help="revoke this token id instead of the current one")
    revoke.add_argument("--no-rotate", action="store_true", help="do not ask for a new token afterwards")
    revoke.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for the operator to sign the id into the list verifiers read (0: do not wait)",
    )
    common(revoke, output=False)
    revoke.set_defaults(func=cmd_revoke)


async def _request_rotation(session: Session, namespace: str, name: str, value: str) -> None:
    kube = await session.kube()
    await kube.annotate_agenttoken(namespace, name, {api.ANN_ROTATE: value}, field_manager=FIELD_MANAGER)


async def _targets(args: argparse.Namespace, session: Session) -> list[tuple[str, str]]:
    if args.name and (args.all or args.selector):
        raise CliError("give a NAME, or --all / -l, not both")
    if not (args.name or args.all or args.selector):
        raise CliError("give a NAME, --all or -l SELECTOR")
    ns = await session.scope(args)
    if args.name:
        namespace = ns or await session.default_namespace()
        await session.agenttoken(namespace, args.name)  # not found: say so before writing
        return [(namespace, args.name)]
    return [
        (o["metadata"]["namespace"], o["metadata"]["name"])
        for o in await session.agenttokens(ns, args.selector)
    ]


async def cmd_rotate(args: argparse.Namespace, session: Session) -> int:
    # A new, unique value: each value is handled exactly once, and a rotate request skips backoff.
    value = f"cli-{time.time_ns()}"
    for namespace, name in await _targets(args, session):
        await _request_rotation(session, namespace, name, value)
        print(f"agenttoken {namespace}/{name}: rotation requested ({api.ANN_ROTATE}={value})")
    return 0


async def _expiry(session: Session, obj: dict[str, Any], token_id: str) -> datetime.datetime | None:
    """When `token_id` (the current or the previous token of `obj`) expires, if recorded."""
    st = obj.get("status") or {}
    if token_id == st.get("tokenId"):
        return parse_time(st.get("expiresAt"))
    if token_id == (st.get("rollout") or {}).get("previousTokenId"):
        # The previous token's expiry is recorded on the Secret.
        secret_name = (obj.get("spec") or {}).get("secret", {}).get("name", "")
        secret = await (await session.kube()).get_secret(obj["metadata"]["namespace"], secret_name)
        ann = ((secret or {}).get("metadata") or {}).get("annotations") or {}
        return parse_time(ann.get(api.ANN_PREVIOUS_EXPIRES_AT))
    return None


async def _publish(session: Session, operator_namespace: str, entry: revocation.Revoked) -> None:
    """Add `entry` to the pending document: read, add, write with the read resourceVersion; again
    on 409. The CLI holds no signing key, so the operator folds it into the signed list."""
    kube = await session.kube()

    async def add() -> None:
        cm = await kube.get_configmap(operator_namespace, PENDING_CONFIGMAP)
        body, _ = next_pending(cm, [entry], entry.revoked_at, operator_namespace)
        try:
            await kube.write_configmap(operator_namespace, body)
        except KubeError as exc:
            if exc.conflict:
                raise  # retry_on_conflict reads again
            raise CliError(f"writing the revocation list failed: HTTP {exc.status}") from None

    try:
        await retry_on_conflict(add, what="revocation list")
    except ConflictRetriesExhausted:
        raise CliError("writing the revocation list kept conflicting; try again") from None


async def _signed(session: Session, operator_namespace: str, token_id: str, wait: float) -> bool:
    """Whether the signed list (what verifiers read) holds token_id within `wait` seconds."""
    kube = await session.kube()
    part = revocation.part_of(token_id)
    deadline = time.monotonic() + wait
    while True:
        _, parsed = stored_part(await kube.get_configmap(operator_namespace, part_configmap(part)), part)
        if parsed is not None and token_id in parsed.revoked:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.1)


async def cmd_revoke(args: argparse.Namespace, session: Session) -> int:
    namespace = await session.namespace(args)
    obj = await session.agenttoken(namespace, args.name)
    current = (obj.get("status") or {}).get("tokenId")
    token_id = args.token_id or current
    if not token_id:
        raise CliError(f"AgentToken {namespace}/{args.name} has no token yet")
    now = datetime.datetime.now(datetime.UTC)
    expires = await _expiry(session, obj, token_id) or now + UNKNOWN_EXPIRY
    entry = revocation.Revoked(token_id, expires, namespace, args.name, now, "Revoked")
    await _publish(session, args.operator_namespace, entry)
    if args.wait > 0 and not await _signed(session, args.operator_namespace, token_id, args.wait):
        # Not an error to retry: the entry is stored and the operator will sign it; say plainly
        # that verifiers do not see it yet (is the operator running? is the list full?).
        print(
            f"token {token_id} of {namespace}/{args.name} is PENDING: stored in ConfigMap "
            f"{PENDING_CONFIGMAP}, but the operator has not signed it into the list verifiers read "
            f"within {args.wait:g}s (is it running? see agenttoken_revocation_list_* metrics)",
            file=sys.stderr,
        )
        return 2
    print(f"revoked token {token_id} of {namespace}/{args.name}")
    if token_id == current and not args.no_rotate:
        await _request_rotation(session, namespace, args.name, f"revoke-{time.time_ns()}")
        print("rotation requested so the agent gets a new token")
    return 0

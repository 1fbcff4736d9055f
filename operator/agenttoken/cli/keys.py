"""`agenttoken keys list` and `agenttoken keys revoke KID` (emergency revocation of a signing key).

`keys revoke` only records the decision: it appends the kid to the ConfigMap
`agenttoken-key-revocations` in the operator's namespace, exactly what a GitOps repository does
declaratively. The operator does the rest (controllers.keys): the key leaves the JWKS at once, a
new key signs, and every AgentToken holding a token of the revoked key is re-issued. `--wait`
follows that until no AgentToken reports the revoked kid any more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from agenttoken.cli.options import DEFAULT_OPERATOR_NAMESPACE, common
from agenttoken.cli.output import emit, render_table
from agenttoken.cli.session import CliError, Session
from agenttoken.controllers.keys import (
    CLIENT_JWKS_KEY,
    JWKS_CONFIGMAP,
    JWKS_KEY,
    KEY_REVOCATIONS_CONFIGMAP,
    requested_kids,
    with_revoked_kid,
)

if TYPE_CHECKING:
    from agenttoken.cli.options import Subparsers

POLL_SECONDS = 1.0
# Options of `keys revoke` and whether each takes a value.
_REVOKE_OPTIONS = {"-h": False, "--help": False, "--force": False, "--wait": False, "--timeout": True}
_REVOKE_OPTIONS["--operator-namespace"] = True


def kid_as_positional(argv: list[str]) -> list[str]:
    """A kid is base64url and may start with `-` (argparse would take it for an option): in
    `keys revoke`, an argument that is no option of it is the kid, wherever it starts."""
    if argv[:2] != ["keys", "revoke"] or "--" in argv:
        return argv
    options: list[str] = []
    positional: list[str] = []
    rest, i = argv[2:], 0
    while i < len(rest):
        arg = rest[i]
        name = arg.split("=", 1)[0]
        takes = 1 if name in _REVOKE_OPTIONS and _REVOKE_OPTIONS[name] and "=" not in arg else 0
        (options if name in _REVOKE_OPTIONS else positional).extend(rest[i : i + 1 + takes])
        i += 1 + takes
    # Options first, then `--` and the kid: after `--` argparse reads no option.
    return [*argv[:2], *options, "--", *positional] if positional else argv


def register(sub: Subparsers) -> None:
    keys = sub.add_parser("keys", help="the built-in issuer's signing keys")
    group = keys.add_subparsers(dest="keys_command", required=True)
    listing = group.add_parser(
        "list", help="published keys (access tokens, client assertions) and revoked kids"
    )
    common(listing)
    listing.set_defaults(func=cmd_list)
    revoke = group.add_parser(
        "revoke", help="emergency: revoke a signing key and re-issue every token it signed"
    )
    revoke.add_argument("kid")
    revoke.add_argument("--force", action="store_true", help="revoke a kid that is not published (ahead)")
    revoke.add_argument("--wait", action="store_true", help="until no AgentToken holds a token of the key")
    revoke.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits (default 600)")
    revoke.add_argument("--operator-namespace", default=DEFAULT_OPERATOR_NAMESPACE)
    revoke.set_defaults(func=cmd_revoke)


async def _published(session: Session, operator_namespace: str) -> list[tuple[str, dict[str, Any]]]:
    cm = await session.configmap(operator_namespace, JWKS_CONFIGMAP)
    data = (cm or {}).get("data") or {}
    found: list[tuple[str, dict[str, Any]]] = []
    for purpose, key in (("access-token", JWKS_KEY), ("client-assertion", CLIENT_JWKS_KEY)):
        found.extend((purpose, k) for k in json.loads(data.get(key) or '{"keys": []}')["keys"])
    return found


async def cmd_list(args: argparse.Namespace, session: Session) -> int:
    published = await _published(session, args.operator_namespace)
    revoked = requested_kids(await session.configmap(args.operator_namespace, KEY_REVOCATIONS_CONFIGMAP))
    rows = [{"kid": k["kid"], "purpose": p, "alg": k.get("alg"), "state": "published"} for p, k in published]
    rows += [{"kid": kid, "purpose": "", "alg": "", "state": "revoked"} for kid in sorted(revoked)]
    emit(
        rows,
        args.output,
        lambda d: render_table(["KID", "PURPOSE", "ALG", "STATE"], [list(r.values()) for r in d]),
    )
    return 0


async def _holders(session: Session, kid: str) -> list[str]:
    return [
        f"{o['metadata']['namespace']}/{o['metadata']['name']}"
        for o in await session.agenttokens(None, None)
        if (o.get("status") or {}).get("keyId") == kid
    ]


async def cmd_revoke(args: argparse.Namespace, session: Session) -> int:
    ns = args.operator_namespace
    kid = args.kid.strip()
    if not kid or any(c.isspace() or c in ",#" for c in kid):
        raise CliError("KID must be one key id (see `agenttoken keys list`)")
    if not args.force and kid not in {k["kid"] for _, k in await _published(session, ns)}:
        raise CliError(
            f"key {kid} is not published; check `agenttoken keys list`, or --force to revoke ahead"
        )
    started = time.monotonic()
    added = await session.update_configmap(
        ns, KEY_REVOCATIONS_CONFIGMAP, lambda cm: with_revoked_kid(cm, kid, ns), "key revocations"
    )
    print(
        f"key {kid}: revocation {'recorded' if added else 'was already recorded'} in {ns}/{KEY_REVOCATIONS_CONFIGMAP}"
    )
    if not args.wait:
        return 0
    deadline = started + args.timeout
    while True:
        published = {k["kid"] for _, k in await _published(session, ns)}
        holders = await _holders(session, kid)
        if kid not in published and not holders:
            print(
                f"key {kid}: unpublished; no AgentToken holds a token of it ({time.monotonic() - started:.1f}s)"
            )
            return 0
        if time.monotonic() > deadline:
            where = (
                "still published"
                if kid in published
                else f"{len(holders)} AgentToken(s) still hold its tokens"
            )
            raise CliError(f"key {kid}: {where} after {args.timeout:.0f}s")
        await asyncio.sleep(POLL_SECONDS)

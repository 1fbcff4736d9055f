"""`agenttoken inspect`, `verify` and `jwks`: a token's claims, its validity, the public keys.

None of them prints a token. Keys and revocations come from the ConfigMaps the operator
publishes, or from its HTTP endpoints with `--url`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import sys
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agenttoken import api
from agenttoken.cli.options import DEFAULT_ISSUER, common
from agenttoken.cli.output import emit, render_table
from agenttoken.cli.session import CliError, Session
from agenttoken.controllers.keys import JWKS_CONFIGMAP
from agenttoken.controllers.revocation import PART_CONFIGMAPS, part_key
from agenttoken.kube.errors import KubeError

if TYPE_CHECKING:
    from agenttoken.cli.options import Subparsers

JWKS_KEY = "jwks.json"


def register(sub: Subparsers) -> None:
    inspect = sub.add_parser("inspect", help="header and claims of the token in the Secret (never the token)")
    inspect.add_argument("name")
    common(inspect)
    inspect.set_defaults(func=cmd_inspect)

    verify = sub.add_parser("verify", help="verify a token against the issuer's JWKS and revocation list")
    verify.add_argument("name", nargs="?", help="AgentToken whose Secret holds the token")
    verify.add_argument("--token-file", help="read the token from this file instead")
    verify.add_argument("--audience", required=True)
    verify.add_argument("--scope", action="append", default=[], help="required scope (repeatable)")
    verify.add_argument("--issuer", default=DEFAULT_ISSUER)
    verify.add_argument("--environment", help="required env claim")
    verify.add_argument("--client-address", help="caller address to check against the cidr claim")
    verify.add_argument("--url", help="operator HTTP base URL (default: read the published ConfigMaps)")
    common(verify)
    verify.set_defaults(func=cmd_verify)

    jwks = sub.add_parser("jwks", help="the published signing keys (public)")
    jwks.add_argument("--url", help="operator HTTP base URL (default: the published ConfigMap)")
    common(jwks)
    jwks.set_defaults(func=cmd_jwks)


def _decode_segment(segment: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return result


async def _secret_token(session: Session, namespace: str, name: str) -> str:
    """The token in the Secret of AgentToken `namespace/name`."""
    spec = (await session.agenttoken(namespace, name)).get("spec") or {}
    secret_name = (spec.get("secret") or {}).get("name", "")
    key = ((spec.get("secret") or {}).get("keys") or {}).get("token", api.DEFAULT_TOKEN_KEY)
    secret = await (await session.kube()).get_secret(namespace, secret_name)
    raw = ((secret or {}).get("data") or {}).get(key)
    if not raw:
        raise CliError(f"Secret {namespace}/{secret_name} holds no token (key {key!r})")
    return base64.b64decode(raw).decode()


async def cmd_inspect(args: argparse.Namespace, session: Session) -> int:
    token = await _secret_token(session, await session.namespace(args), args.name)
    parts = token.split(".")
    if len(parts) != 3:
        raise CliError("the Secret's token is not a JWS compact serialization")
    data = {"header": _decode_segment(parts[0]), "claims": _decode_segment(parts[1])}
    claims = data["claims"]
    for field in ("iat", "nbf", "exp"):
        if isinstance(claims.get(field), int):
            data.setdefault("times", {})[field] = datetime.datetime.fromtimestamp(
                claims[field], datetime.UTC
            ).strftime("%Y-%m-%dT%H:%M:%SZ")
    emit(data, args.output if args.output != "table" else "yaml", lambda d: "")
    return 0


def _http_get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (http(s) URLs from the user)
        return bytes(resp.read())


async def cmd_jwks(args: argparse.Namespace, session: Session) -> int:
    if args.url:
        url = args.url.rstrip("/") + "/jwks.json"
        try:
            data = json.loads(await asyncio.to_thread(_http_get, url))
        except (OSError, ValueError) as exc:  # URLError is an OSError; a body that is no JSON
            raise CliError(f"fetching {url} failed: {exc}") from None
    else:
        cm = await session.configmap(args.operator_namespace, JWKS_CONFIGMAP)
        if cm is None:
            raise CliError(f"no JWKS published in {args.operator_namespace} (is the operator running?)")
        data = json.loads(cm["data"][JWKS_KEY])
    emit(
        data,
        args.output,
        lambda d: render_table(
            ["KID", "ALG", "KTY", "USE"],
            [[k.get("kid"), k.get("alg"), k.get("kty"), k.get("use")] for k in d["keys"]],
        ),
    )
    return 0


async def _published(session: Session, operator_namespace: str) -> tuple[str, str, Callable[[str], bytes]]:
    """The JWKS and revocation-list URLs of the published ConfigMaps, and a `fetch` serving them.

    The Verifier fetches synchronously, so both are read up front; a failed read is raised when
    the Verifier asks for that document, which it treats like any failed fetch (fails closed).
    The revocation list is the signed parts as the operator stored them (the document
    `/revocations.json` serves); a missing part fails closed, as it would for an API.
    """
    jwks_url = f"configmap://{operator_namespace}/{JWKS_CONFIGMAP}/{JWKS_KEY}"
    revocations_url = f"configmap://{operator_namespace}/agenttoken-revocations-*"
    documents: dict[str, bytes | KubeError] = {}
    try:
        cm = await session.configmap(operator_namespace, JWKS_CONFIGMAP)
        documents[jwks_url] = str(((cm or {}).get("data") or {}).get(JWKS_KEY, "")).encode()
    except KubeError as exc:
        documents[jwks_url] = exc
    try:
        lists = []
        for i, name in enumerate(PART_CONFIGMAPS):
            signed = ((await session.configmap(operator_namespace, name) or {}).get("data") or {}).get(
                part_key(i)
            )
            if signed:
                lists.append(signed)
        documents[revocations_url] = json.dumps({"lists": lists}).encode()
    except KubeError as exc:
        documents[revocations_url] = exc

    def fetch(url: str) -> bytes:
        document = documents[url]
        if isinstance(document, KubeError):
            raise document
        return document

    return jwks_url, revocations_url, fetch


def _read_token_file(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


async def cmd_verify(args: argparse.Namespace, session: Session) -> int:
    from agenttoken_sdk.verify import VerificationError, Verifier

    if args.token_file:
        token = _read_token_file(args.token_file)
    elif args.name:
        token = await _secret_token(session, await session.namespace(args), args.name)
    else:
        raise CliError("give an AgentToken NAME or --token-file")
    fetch: Callable[[str], bytes] = _http_get
    if args.url:
        base = args.url.rstrip("/")
        jwks_url, revocations_url = f"{base}/jwks.json", f"{base}/revocations.json"
    else:
        jwks_url, revocations_url, fetch = await _published(session, args.operator_namespace)
    verifier = Verifier(
        issuer=args.issuer,
        audience=args.audience,
        jwks_url=jwks_url,
        revocations_url=revocations_url,
        environment=args.environment,
        fetch=fetch,
    )
    try:
        # In a thread: with --url the Verifier's fetches are blocking HTTP requests.
        claims = await asyncio.to_thread(
            verifier.verify, token, required_scopes=args.scope, client_address=args.client_address
        )
    except VerificationError as exc:
        print(f"INVALID ({exc.check}): {exc}", file=sys.stderr)
        return 1
    result = {
        "valid": True,
        "tokenId": claims.token_id,
        "subject": claims.subject,
        "scopes": list(claims.scopes),
        "audience": list(claims.audience),
        "expiresAt": claims.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    emit(
        result,
        args.output,
        lambda r: f"VALID: token {r['tokenId']} for {r['subject']}, expires {r['expiresAt']}",
    )
    return 0

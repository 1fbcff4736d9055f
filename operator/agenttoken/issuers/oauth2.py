"""The `oauth2` issuer: an access token from an OAuth 2.0 / OIDC provider (client credentials).

The token endpoint is given directly (`tokenURL`) or found by discovery from `issuerURL`
(`/.well-known/openid-configuration`, then RFC 8414's `/.well-known/oauth-authorization-server`).
The client authenticates with its secret (HTTP Basic, RFC 6749 2.3.1). The AgentToken's scopes
are sent as `scope`, its audience as `audience` (and `resource`, RFC 8707) when configured. The
provider decides the lifetime: we trust `expires_in`. Error responses are reported by their
OAuth `error` code, never with the body.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp

from agenttoken.issuers import IssueContext, Issued, IssueError
from agenttoken.tokens import token_hash


def _ssl(config: Mapping[str, Any]) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cadata=config["caBundle"]) if config.get("caBundle") else True


async def _discover(session: aiohttp.ClientSession, issuer: str, config: Mapping[str, Any]) -> str:
    base = issuer.rstrip("/")
    parsed = urllib.parse.urlsplit(base)
    candidates = [
        f"{base}/.well-known/openid-configuration",
        # RFC 8414: the well-known segment goes between host and path.
        urllib.parse.urlunsplit(
            (parsed.scheme, parsed.netloc, "/.well-known/oauth-authorization-server" + parsed.path, "", "")
        ),
    ]
    for url in candidates:
        try:
            async with session.get(url, ssl=_ssl(config)) as resp:
                if resp.status == 200:
                    doc = await resp.json(content_type=None)
                    if isinstance(doc, dict) and isinstance(doc.get("token_endpoint"), str):
                        return str(doc["token_endpoint"])
        except (aiohttp.ClientError, ValueError):
            continue
    raise IssueError(f"discovery at {base} found no token_endpoint")


async def issue(
    ctx: IssueContext, config: Mapping[str, Any], *, client_secret: str, now: datetime.datetime
) -> Issued:
    timeout = aiohttp.ClientTimeout(total=float(config.get("timeoutSeconds") or 10))
    form: dict[str, str] = {"grant_type": "client_credentials"}
    if ctx.request.scopes:
        form["scope"] = " ".join(ctx.request.scopes)
    if config.get("sendAudience"):
        form["audience"] = " ".join(ctx.request.audience)
        form["resource"] = ctx.request.audience[0]
    basic = base64.b64encode(
        f"{urllib.parse.quote(config['clientID'], safe='')}:{urllib.parse.quote(client_secret, safe='')}".encode()
    ).decode()
    headers = {"Authorization": f"Basic {basic}", "Accept": "application/json"}
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            endpoint = config.get("tokenURL") or await _discover(session, config["issuerURL"], config)
            async with session.post(endpoint, data=form, headers=headers, ssl=_ssl(config)) as resp:
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, json.JSONDecodeError):
                    body = None
                if resp.status >= 400 or not isinstance(body, dict) or "access_token" not in body:
                    code = body.get("error") if isinstance(body, dict) else None
                    raise IssueError(
                        f"token endpoint {endpoint} refused: {code}"
                        if code
                        else f"token endpoint {endpoint} answered HTTP {resp.status}"
                    )
    except TimeoutError:
        raise IssueError(f"OAuth2 provider did not answer within {timeout.total:.0f}s") from None
    except aiohttp.ClientError as exc:
        raise IssueError(f"OAuth2 provider unreachable: {type(exc).__name__}") from None
    except asyncio.CancelledError:
        raise
    token = body["access_token"]
    try:
        lifetime = int(body.get("expires_in") or 0)
    except (TypeError, ValueError):
        lifetime = 0
    if not isinstance(token, str) or lifetime <= 0:
        raise IssueError("token endpoint answered without access_token and a positive expires_in")
    claims: dict[str, Any] = {}
    parts = token.split(".")
    if len(parts) == 3:  # a JWT access token: take its id; opaque tokens get a hash-based id
        try:
            claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except ValueError:
            claims = {}
    token_id = str(claims.get("jti") or token_hash(token).removeprefix("sha256:")[:32])
    return Issued(token, token_id, "oauth2", now, now + datetime.timedelta(seconds=lifetime))

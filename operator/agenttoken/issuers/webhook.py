"""The `webhook` issuer: an HTTP service mints the token.

Request: POST JSON {namespace, name, uid, subject, scopes, audience, ttlSeconds}, optionally with
`Authorization: Bearer <token from a Secret>`. Response: JSON {token, expiresAt, tokenId?}.
TLS is verified (system roots or the issuer's caBundle). Errors never carry the response body:
it could contain a token.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

from agenttoken.core.times import parse_time
from agenttoken.core.tokens import default_subject, token_hash
from agenttoken.issuers import IssueContext, Issued, IssueError


async def issue(
    ctx: IssueContext, config: Mapping[str, Any], *, bearer: str | None, now: datetime.datetime
) -> Issued:
    req = ctx.request
    payload = {
        "namespace": req.namespace,
        "name": req.name,
        "uid": req.uid,
        "subject": req.subject or default_subject(req.namespace, req.name),
        "scopes": list(req.scopes),
        "audience": list(req.audience),
        "ttlSeconds": int(req.ttl.total_seconds()),
    }
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    ssl_context: ssl.SSLContext | bool = True
    if config.get("caBundle"):
        ssl_context = ssl.create_default_context(cadata=config["caBundle"])
    timeout = aiohttp.ClientTimeout(total=float(config.get("timeoutSeconds") or 10))
    url = config["url"]
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(url, json=payload, headers=headers, ssl=ssl_context) as resp,
        ):
            if resp.status >= 400:
                raise IssueError(f"webhook {url} answered HTTP {resp.status}")
            try:
                body = await resp.json(content_type=None)
            except ValueError:
                raise IssueError(f"webhook {url} answered with a body that is not JSON") from None
    except TimeoutError:
        raise IssueError(f"webhook {url} did not answer within {timeout.total:.0f}s") from None
    except aiohttp.ClientError as exc:
        raise IssueError(f"webhook {url} unreachable: {type(exc).__name__}") from None
    except asyncio.CancelledError:
        raise
    token = body.get("token") if isinstance(body, dict) else None
    expires = parse_time(body.get("expiresAt")) if isinstance(body, dict) else None
    if not isinstance(token, str) or not token or expires is None:
        raise IssueError(f"webhook {url} answered without token and expiresAt")
    if expires <= now:
        raise IssueError(f"webhook {url} returned a token that is already expired")
    token_id = str(body.get("tokenId") or token_hash(token).removeprefix("sha256:")[:32])
    return Issued(token, token_id, "webhook", now, expires)

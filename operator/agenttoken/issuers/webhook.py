"""The `webhook` issuer: an HTTP service mints the token.

Request: POST JSON {namespace, name, uid, subject, scopes, audience, ttlSeconds}, optionally with
`Authorization: Bearer <token from a Secret>`. Response: JSON {token, expiresAt, tokenId?}.
TLS is verified (system roots or the issuer's caBundle). Errors never carry the response body:
it could contain a token.

A JWT answer is read (not verified: the webhook is the issuer) and its `sub`, `aud`, `scope` and
`env` must fit the issuer's policy like a request does (and its expiresAt the maxTTL): a webhook that maps the requested subject
to one the policy does not allow is refused and nothing is written (`PolicyRefused`). Opaque
tokens carry no claims we can read; the webhook answers for them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import json
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp

from agenttoken.core import policy
from agenttoken.core.conditions import Reason
from agenttoken.core.times import parse_time
from agenttoken.core.timing import format_duration
from agenttoken.core.tokens import default_subject, token_hash
from agenttoken.issuers import IssueContext, Issued, IssueError, IssuerSpec, PolicyRefused
from agenttoken.issuers.credentials import IssuerDeps, credential, credential_problem


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


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The payload of a compact JWS, unverified; None for anything else (an opaque token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return payload if isinstance(payload, dict) else None


# Clock skew and rounding a webhook's expiresAt may add beyond the requested lifetime.
LIFETIME_SLACK = datetime.timedelta(seconds=60)


def check_answer(issuer: IssuerSpec, ctx: IssueContext, issued: Issued, url: str) -> None:
    """PolicyRefused when the webhook's token lives longer than the issuer's maxTTL allows, or
    its JWT claims what the issuer's policy does not allow."""
    max_ttl = issuer.policy.max_ttl
    if max_ttl is not None and issued.expires_at - issued.issued_at > max_ttl + LIFETIME_SLACK:
        raise PolicyRefused(
            f"webhook {url} returned a token outside the issuer's policy: it expires at "
            f"{issued.expires_at.isoformat()}, beyond the issuer's maxTTL {format_duration(max_ttl)}"
        )
    claims = jwt_claims(issued.token)
    if claims is None:
        return
    req = ctx.request
    asked = policy.Request(
        namespace=req.namespace,
        namespace_labels={},
        scopes=req.scopes,
        audience=req.audience,
        ttl=req.ttl,
        name=req.name,
        subject=req.subject,
        environment=req.environment,
    )
    violation = policy.check_claims(issuer.policy, asked, claims)
    if violation is not None:
        raise PolicyRefused(f"webhook {url} returned a token outside the issuer's policy: {violation}")


class WebhookIssuer:
    binds_to_secret = False

    def __init__(self, deps: IssuerDeps) -> None:
        self.deps = deps

    async def issue(self, issuer: IssuerSpec, ctx: IssueContext, now: datetime.datetime) -> Issued:
        bearer = await credential(self.deps, issuer, issuer.config.get("authSecretRef"), "token")
        issued = await issue(ctx, issuer.config, bearer=bearer, now=now)
        check_answer(issuer, ctx, issued, issuer.config["url"])
        return issued

    async def problem(self, issuer: IssuerSpec) -> Reason | None:
        return await credential_problem(self.deps, issuer, "authSecretRef", "token")

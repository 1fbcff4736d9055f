"""The `oauth2` issuer: an access token from an OAuth 2.0 / OIDC provider.

The token endpoint is given directly (`tokenURL`) or found by discovery from `issuerURL`
(`/.well-known/openid-configuration`, then RFC 8414's `/.well-known/oauth-authorization-server`).

Grants (`grant`): `client_credentials` (RFC 6749 4.4), `token_exchange` (RFC 8693) and
`jwt_bearer` (RFC 7523 2.1). The last two present a subject token: a short-lived JWT minted by the
built-in issuer naming the AgentToken, or a Kubernetes ServiceAccount token (TokenRequest);
`OAuth2Issuer.credentials` obtains it, `issue` only sends it.

Client authentication (`clientAuthMethod`): `client_secret_basic` (RFC 6749 2.3.1) or
`private_key_jwt` (RFC 7523 2.2 / OIDC Core 9): a client assertion signed by the operator's
client-assertion key, a key that never signs access tokens, published at `<issuer>/client-jwks.json`
(configure that as the client's JWKS URL at the provider). So no shared secret exists at all, and
no access-token verifier (which trusts only `<issuer>/jwks.json`) can accept an assertion.

The AgentToken's scopes are sent as `scope`, its audience as `audience` (and `resource`, RFC 8707)
when configured. The provider decides the lifetime: we trust `expires_in`. Error responses are
reported by their OAuth `error` code, never with the body.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import json
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import aiohttp

from agenttoken.core.conditions import Reason
from agenttoken.core.keys import SigningKey
from agenttoken.core.tokens import TokenRequest, client_assertion, token_hash
from agenttoken.issuers import IssueContext, Issued, IssueError, IssuerSpec
from agenttoken.issuers import builtin as builtin_issuer
from agenttoken.issuers import kubernetes as kubernetes_issuer
from agenttoken.issuers.credentials import IssuerDeps, credential, credential_problem, keys_problem

GRANT_TYPES: Final = {
    "client_credentials": "client_credentials",
    "token_exchange": "urn:ietf:params:oauth:grant-type:token-exchange",
    "jwt_bearer": "urn:ietf:params:oauth:grant-type:jwt-bearer",
}
JWT_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:jwt"
ASSERTION_TYPE: Final = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# Short: a client assertion is used once; a subject token only for this one request (providers cap
# assertion lifetimes, Keycloak at 5 minutes by default).
CLIENT_ASSERTION_LIFETIME: Final = datetime.timedelta(seconds=60)
SUBJECT_TOKEN_LIFETIME: Final = datetime.timedelta(minutes=2)


@dataclass(frozen=True)
class Credentials:
    """What the client presents; none of it is ever logged or reported."""

    client_secret: str | None = field(default=None, repr=False)
    signing_key: SigningKey | None = field(default=None, repr=False)  # private_key_jwt: the assertion key
    subject_token: str | None = field(default=None, repr=False)  # token_exchange, jwt_bearer


def grant(config: Mapping[str, Any]) -> str:
    return str(config.get("grant") or "client_credentials")


def client_auth_method(config: Mapping[str, Any]) -> str:
    return str(config.get("clientAuthMethod") or "client_secret_basic")


def needs_subject_token(config: Mapping[str, Any]) -> bool:
    return grant(config) in ("token_exchange", "jwt_bearer")


def subject_source(config: Mapping[str, Any]) -> str:
    return str((config.get("subjectToken") or {}).get("source") or "builtin")


def uses_builtin_keys(config: Mapping[str, Any]) -> bool:
    """Whether the client assertion or the subject token is signed with the built-in keys."""
    return client_auth_method(config) == "private_key_jwt" or (
        needs_subject_token(config) and subject_source(config) == "builtin"
    )


def subject_audience(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Who the subject token is for: configured, else the provider (issuer URL, else token URL)."""
    configured = (config.get("subjectToken") or {}).get("audience")
    if configured:
        return tuple(configured)
    return (str(config.get("issuerURL") or config.get("tokenURL")),)


def subject_request(req: TokenRequest, config: Mapping[str, Any]) -> TokenRequest:
    """The built-in subject token: the AgentToken's identity and scopes, for the provider.

    Its `sub` is always `agenttoken:<namespace>:<name>`, never `spec.subject`: the provider maps
    `sub` to one of its users, and a namespace user must not be able to claim any identity there.
    """
    return TokenRequest(
        namespace=req.namespace,
        name=req.name,
        uid=req.uid,
        subject=None,
        audience=subject_audience(config),
        scopes=req.scopes,
        ttl=SUBJECT_TOKEN_LIFETIME,
    )


def build_form(
    req: TokenRequest,
    config: Mapping[str, Any],
    creds: Credentials,
    *,
    endpoint: str,
    now: datetime.datetime,
) -> tuple[dict[str, str], dict[str, str]]:
    """The token request: (form, headers). Pure except for the assertion's random jti."""
    kind = grant(config)
    form: dict[str, str] = {"grant_type": GRANT_TYPES[kind]}
    if kind in ("token_exchange", "jwt_bearer"):
        if not creds.subject_token:
            raise IssueError(f"the {kind} grant needs a subject token")
        if kind == "jwt_bearer":
            form["assertion"] = creds.subject_token
        else:
            form["subject_token"] = creds.subject_token
            form["subject_token_type"] = str(config.get("subjectTokenType") or JWT_TOKEN_TYPE)
            if config.get("requestedTokenType"):
                form["requested_token_type"] = str(config["requestedTokenType"])
            if config.get("subjectIssuer"):  # Keycloak's legacy external exchange names the IdP
                form["subject_issuer"] = str(config["subjectIssuer"])
    if req.scopes:
        form["scope"] = " ".join(req.scopes)
    if config.get("sendAudience"):
        form["audience"] = " ".join(req.audience)
        form["resource"] = req.audience[0]
    headers = {"Accept": "application/json"}
    client_id = str(config["clientID"])
    if client_auth_method(config) == "private_key_jwt":
        if creds.signing_key is None:
            raise IssueError("private_key_jwt needs the operator's client-assertion key")
        form["client_id"] = client_id
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = client_assertion(
            creds.signing_key,
            client_id=client_id,
            audience=endpoint,
            now=now,
            lifetime=CLIENT_ASSERTION_LIFETIME,
        )
    else:
        if creds.client_secret is None:
            raise IssueError("client_secret_basic needs a client secret")
        user = urllib.parse.quote(client_id, safe="")
        password = urllib.parse.quote(creds.client_secret, safe="")
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return form, headers


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
    ctx: IssueContext, config: Mapping[str, Any], creds: Credentials, *, now: datetime.datetime
) -> Issued:
    timeout = aiohttp.ClientTimeout(total=float(config.get("timeoutSeconds") or 10))
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            endpoint = config.get("tokenURL") or await _discover(session, config["issuerURL"], config)
            form, headers = build_form(ctx.request, config, creds, endpoint=endpoint, now=now)
            async with session.post(endpoint, data=form, headers=headers, ssl=_ssl(config)) as resp:
                try:
                    body = await resp.json(content_type=None)
                except (ValueError, json.JSONDecodeError):
                    body = None
                if resp.status >= 400 or not isinstance(body, dict) or "access_token" not in body:
                    code = body.get("error") if isinstance(body, dict) else None
                    raise IssueError(
                        f"token endpoint {endpoint} refused: {code}"
                        if isinstance(code, str) and code
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


class OAuth2Issuer:
    binds_to_secret = False

    def __init__(self, deps: IssuerDeps) -> None:
        self.deps = deps

    async def issue(self, issuer: IssuerSpec, ctx: IssueContext, now: datetime.datetime) -> Issued:
        return await issue(ctx, issuer.config, await self.credentials(issuer, ctx, now), now=now)

    async def problem(self, issuer: IssuerSpec) -> Reason | None:
        assertion = client_auth_method(issuer.config) == "private_key_jwt"
        keys = keys_problem(self.deps, assertion=assertion) if uses_builtin_keys(issuer.config) else None
        return keys or await credential_problem(self.deps, issuer, "clientSecretRef", "clientSecret")

    async def credentials(self, issuer: IssuerSpec, ctx: IssueContext, now: datetime.datetime) -> Credentials:
        """The client's credential (secret or signing key) and, for assertion grants, a subject token."""
        config = issuer.config
        secret = key = subject = None
        if client_auth_method(config) == "private_key_jwt":
            key = self.deps.assertion_key()
        else:
            secret = await credential(self.deps, issuer, config.get("clientSecretRef"), "clientSecret")
        if needs_subject_token(config):
            req = ctx.request
            if subject_source(config) == "serviceAccount":
                account = str((config.get("subjectToken") or {}).get("serviceAccountName"))
                spec = {
                    "audiences": list(subject_audience(config)),
                    "expirationSeconds": kubernetes_issuer.MIN_EXPIRATION_SECONDS,
                }
                subject, _ = await kubernetes_issuer.request_token(
                    self.deps.kube, req.namespace, account, spec
                )
            else:
                subject = builtin_issuer.issue(
                    dataclasses.replace(ctx, request=subject_request(req, config)),
                    self.deps.signing_key(),
                    issuer_url=self.deps.issuer_url,
                    now=now,
                ).token
        return Credentials(client_secret=secret, signing_key=key, subject_token=subject)

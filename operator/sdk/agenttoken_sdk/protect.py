"""Protecting an HTTP API (an MCP server, say) with agent tokens: one decision per request.

`ProtectedResource` is the configuration: the Verifier, the server's canonical resource URI (the
token's `aud` must hold it, RFC 8707) and which scopes each route needs. `authorize()` is the plain
function every framework can call with the request's method, path, Authorization header values and
peer address; it answers with a `Decision`: serve the metadata, refuse with the right challenge,
or let the request through with the token's claims. The ASGI and WSGI middleware
(agenttoken_sdk.asgi, agenttoken_sdk.wsgi) are thin adapters around it.

What a client sees, following the MCP authorization spec (2025-11-25):

| request | answer |
|---|---|
| GET /.well-known/oauth-protected-resource[/path] | 200, the RFC 9728 document |
| no Bearer token | 401 `WWW-Authenticate: Bearer resource_metadata="…", scope="…"` |
| a malformed Authorization header | 400 `error="invalid_request"` |
| a token that fails verification (also: another resource's `aud`) | 401 `error="invalid_token"` |
| a valid token without the route's scopes | 403 `error="insufficient_scope", scope="…"` |

The scope check is the Verifier's: it comes after signature, issuer, audience and expiry but before
revocation, environment and network binding (CHECKS), so a revoked token that also lacks a scope is
answered 403, not 401; it is refused either way. The error description names only the failed check
(`aud`, `exp`, ...): never the token, and never the verifier's reason (a JWKS fetch error would tell a
caller about the network inside).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Final

from agenttoken_sdk.resource import (
    PUBLIC,
    MalformedAuthorization,
    Response,
    bearer_token,
    error_response,
    json_response,
    metadata_document,
    metadata_paths,
    metadata_url,
    resource_uri_problem,
    scopes_for,
)
from agenttoken_sdk.verify import Claims, VerificationError, Verifier

__all__ = ["CLAIMS_KEY", "PUBLIC", "Decision", "ProtectedResource", "authorize", "claims_of"]

#: Where the middleware leaves the verified Claims: the ASGI scope / WSGI environ key.
CLAIMS_KEY: Final = "agenttoken.claims"

_METADATA_HEADERS: Final = (
    # Browser-based MCP clients read the metadata cross-origin (the MCP SDKs serve it with CORS too).
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "GET, OPTIONS"),
    ("Cache-Control", "public, max-age=300"),
)


@dataclass(frozen=True)
class Decision:
    """What to do with one request: send `response`, or call the application (response None)
    with `claims` (None on a PUBLIC route)."""

    response: Response | None = None
    claims: Claims | None = None


@dataclass(frozen=True)
class ProtectedResource:
    """One API protected by agent tokens.

    resource: the canonical resource URI clients use (`https://tools.example.com/mcp`); tokens must
      carry it in `aud`, so it must equal verifier's audience.
    routes: path prefix -> scopes a token needs there (longest prefix wins; PUBLIC: no token).
    default_scopes: for paths no route matches; () needs a valid token with any scopes.
    authorization_servers: published in the metadata; default the verifier's issuer.
    scopes_supported: published in the metadata; default every scope the routes name.
    """

    verifier: Verifier
    resource: str
    routes: Mapping[str, Collection[str] | None] = field(default_factory=dict)
    default_scopes: Collection[str] | None = ()
    authorization_servers: Collection[str] | None = None
    scopes_supported: Collection[str] | None = None
    resource_name: str | None = None

    def __post_init__(self) -> None:
        problem = resource_uri_problem(self.resource)
        if problem:
            raise ValueError(f"resource {self.resource!r}: {problem}")
        if self.verifier.audience != self.resource:
            raise ValueError(
                f"the verifier checks audience {self.verifier.audience!r}, not the resource "
                f"{self.resource!r}: tokens must be bound to this resource (RFC 8707)"
            )
        for name in ("routes", "default_scopes", "authorization_servers", "scopes_supported"):
            if isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a collection, not a string")

    @cached_property
    def metadata_url(self) -> str:
        """Where the metadata lives (RFC 9728 §3.1), the challenges' `resource_metadata`."""
        return metadata_url(self.resource)

    @cached_property
    def metadata_paths(self) -> frozenset[str]:
        """The request paths that serve the metadata (computed once, asked on every request)."""
        return metadata_paths(self.resource)

    def metadata(self) -> dict[str, object]:
        """The RFC 9728 Protected Resource Metadata document."""
        servers = self.authorization_servers
        return metadata_document(
            self.resource,
            servers if servers is not None else [self.verifier.issuer],
            self.scopes_supported if self.scopes_supported is not None else self._route_scopes(),
            self.resource_name,
        )

    def _route_scopes(self) -> list[str]:
        every: Iterable[Collection[str] | None] = [*self.routes.values(), self.default_scopes]
        return list(dict.fromkeys(s for scopes in every if scopes is not None for s in scopes))

    def scopes_for(self, path: str) -> tuple[str, ...] | None:
        """The scopes path needs; None for a PUBLIC path."""
        return scopes_for(self.routes, path, self.default_scopes)


def authorize(
    protected: ProtectedResource,
    *,
    method: str,
    path: str,
    authorization: Collection[str] = (),
    client_address: str | None = None,
) -> Decision:
    """Decide one request. path is the request path without the query string; authorization the
    values of its Authorization headers (several are refused); client_address the peer's IP, for
    CIDR-bound tokens. Verification may block (a revocation-list fetch): async callers run it in a
    thread, as agenttoken_sdk.asgi does."""
    if path in protected.metadata_paths:
        return Decision(response=_metadata_response(protected, method))
    needed = protected.scopes_for(path)
    if needed is PUBLIC:
        return Decision()
    where = protected.metadata_url
    try:
        token = bearer_token(authorization)
    except MalformedAuthorization as exc:
        return Decision(response=error_response(400, where, error="invalid_request", description=str(exc)))
    if token is None:
        return Decision(response=error_response(401, where, scope=needed))
    try:
        claims = protected.verifier.verify(token, required_scopes=needed, client_address=client_address)
    except VerificationError as exc:
        if exc.check == "scope":
            return Decision(
                response=error_response(
                    403,
                    where,
                    error="insufficient_scope",
                    scope=needed,
                    description="the token lacks a scope this route needs",
                )
            )
        return Decision(
            response=error_response(
                401, where, error="invalid_token", scope=needed, description=f"token rejected: {exc.check}"
            )
        )
    return Decision(claims=claims)


def _metadata_response(protected: ProtectedResource, method: str) -> Response:
    if method == "OPTIONS":
        return Response(204, _METADATA_HEADERS, b"")
    if method not in ("GET", "HEAD"):
        return Response(405, (("Allow", "GET, HEAD, OPTIONS"), ("Content-Length", "0")), b"")
    response = json_response(200, protected.metadata(), _METADATA_HEADERS)
    return response._replace(body=b"") if method == "HEAD" else response


def claims_of(scope_or_environ: Mapping[str, object]) -> Claims | None:
    """The verified Claims the middleware left in an ASGI scope or WSGI environ (None: public route)."""
    claims = scope_or_environ.get(CLAIMS_KEY)
    return claims if isinstance(claims, Claims) else None

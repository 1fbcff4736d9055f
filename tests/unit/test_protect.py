"""The resource-server middleware: RFC 9728 metadata, RFC 6750 challenges, RFC 8707 audience, per-route
scopes; the same decisions through the plain function, a WSGI app and an ASGI app (no cluster).

Tokens are minted by the operator's own code with a key whose JWKS the Verifier is given as a dict,
so nothing here touches the network; the ASGI app is a Starlette app driven by httpx's ASGI transport
and the WSGI app a bare callable driven by wsgiref's test utilities.
"""

from __future__ import annotations

import asyncio
import io
import json
import wsgiref.util
from collections.abc import Iterable, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agenttoken.core.keys import KeyRing, generate_key
from agenttoken.core.tokens import TokenRequest, mint
from agenttoken_sdk import asgi, wsgi
from agenttoken_sdk.protect import PUBLIC, Decision, ProtectedResource, authorize, claims_of
from agenttoken_sdk.resource import challenge, metadata_url, scopes_for
from agenttoken_sdk.verify import Verifier

ISSUER = "https://issuer.example.com/issuers/builtin"
RESOURCE = "https://tools.example.com/mcp"
NOW = datetime.now(UTC)
KEY = generate_key("ES256", NOW - timedelta(hours=1))
METADATA = "https://tools.example.com/.well-known/oauth-protected-resource/mcp"


def token(*, audience: tuple[str, ...] = (RESOURCE,), scopes: tuple[str, ...] = ("tools:call",)) -> str:
    req = TokenRequest(
        namespace="agents", name="researcher", uid="u-1", subject=None, audience=audience,
        scopes=scopes, ttl=timedelta(hours=1), environment=None, allowed_cidrs=(),
    )  # fmt: skip
    return mint(req, KEY, issuer=ISSUER, now=NOW).token


def protected(**overrides: Any) -> ProtectedResource:
    verifier = Verifier(issuer=ISSUER, audience=RESOURCE, jwks=KeyRing((KEY,)).jwks(NOW), audit=False)
    config: dict[str, Any] = {
        "routes": {"/mcp": ["tools:call"], "/mcp/admin": ["tools:admin"], "/healthz": PUBLIC},
        "resource_name": "Demo tools",
    }
    return ProtectedResource(verifier=verifier, resource=RESOURCE, **(config | overrides))


def params(www_authenticate: str) -> dict[str, str]:
    """The auth-params of one Bearer challenge (our values never hold commas or quotes)."""
    scheme, _, rest = www_authenticate.partition(" ")
    assert scheme == "Bearer"
    return {k.strip(): v.strip().strip('"') for k, _, v in (p.partition("=") for p in rest.split(", "))}


def decide(path: str, header: str | None = None, method: str = "POST") -> Decision:
    return authorize(protected(), method=method, path=path, authorization=[] if header is None else [header])


def refusal(path: str, header: str | None, status: int) -> dict[str, str]:
    """The challenge's parameters of a request that must be refused with status."""
    response = decide(path, header).response
    assert response is not None
    assert response.status == status
    return params(dict(response.headers)["WWW-Authenticate"])


def test_metadata_is_served_at_the_path_suffixed_and_root_well_known_paths() -> None:
    p = protected()
    assert p.metadata_url == METADATA
    for path in ("/.well-known/oauth-protected-resource/mcp", "/.well-known/oauth-protected-resource"):
        response = authorize(p, method="GET", path=path).response
        assert response is not None
        assert response.status == 200
        assert json.loads(response.body) == {
            "resource": RESOURCE,
            "authorization_servers": [ISSUER],
            "scopes_supported": ["tools:call", "tools:admin"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Demo tools",
        }
        assert dict(response.headers)["Access-Control-Allow-Origin"] == "*"
    options = authorize(p, method="OPTIONS", path="/.well-known/oauth-protected-resource/mcp").response
    assert options is not None
    assert options.status == 204
    post = authorize(p, method="POST", path="/.well-known/oauth-protected-resource").response
    assert post is not None
    assert post.status == 405


def test_no_token_is_answered_401_with_resource_metadata_and_the_route_scopes() -> None:
    www = refusal("/mcp", None, 401)
    assert www == {"resource_metadata": METADATA, "scope": "tools:call"}  # no error code: RFC 6750 §3.1
    # Another scheme is no token of ours: the same answer.
    assert refusal("/mcp", "Basic dXNlcjpwYXNz", 401) == www


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer a,b", "Bearer \u00e9"])
def test_a_malformed_bearer_credential_is_invalid_request(header: str) -> None:
    assert refusal("/mcp", header, 400)["error"] == "invalid_request"


def test_a_token_for_another_resource_is_invalid_token_and_never_echoed() -> None:
    other = token(audience=("https://other.example.com/mcp",))
    www = refusal("/mcp", f"Bearer {other}", 401)
    assert www["error"] == "invalid_token"
    assert www["error_description"] == "token rejected: aud"
    assert other not in repr(decide("/mcp", f"Bearer {other}"))
    assert refusal("/mcp", "Bearer abc.def.ghi", 401)["error_description"] == "token rejected: format"


def test_missing_scope_is_403_insufficient_scope_naming_the_needed_scopes() -> None:
    reader = token(scopes=("tools:call",))
    www = refusal("/mcp/admin/reset", f"Bearer {reader}", 403)
    assert www["error"] == "insufficient_scope"
    assert www["scope"] == "tools:admin"
    assert www["resource_metadata"] == METADATA


def test_a_valid_token_passes_with_its_claims_and_public_routes_need_none() -> None:
    decision = decide("/mcp", f"bearer {token()}")  # the scheme is case-insensitive
    assert decision.response is None
    assert decision.claims is not None
    assert decision.claims.subject == "agenttoken:agents:researcher"
    assert decide("/healthz").response is None
    assert decide("/other").response is not None  # default_scopes (): any valid token, but a token


def test_routes_match_the_longest_prefix_on_segment_boundaries() -> None:
    routes = {"/mcp": ["a"], "/mcp/admin": ["b"], "/": ["root"]}
    assert scopes_for(routes, "/mcp", None) == ("a",)
    assert scopes_for(routes, "/mcp/admin/x", None) == ("b",)
    assert scopes_for(routes, "/mcpx", None) == ("root",)
    assert scopes_for({"/mcp": ["a"]}, "/mcpx", ()) == ()
    assert scopes_for({"/mcp": None}, "/mcp/y", ()) is None


def test_the_resource_must_be_canonical_and_the_verifiers_audience() -> None:
    verifier = Verifier(issuer=ISSUER, audience=RESOURCE, jwks=KeyRing((KEY,)).jwks(NOW), audit=False)
    with pytest.raises(ValueError, match="resource URI"):
        ProtectedResource(verifier=verifier, resource="https://Tools.example.com/mcp")
    with pytest.raises(ValueError, match="RFC 8707"):
        ProtectedResource(verifier=verifier, resource="https://tools.example.com/other")
    assert (
        metadata_url("https://tools.example.com/")
        == "https://tools.example.com/.well-known/oauth-protected-resource"
    )
    assert challenge("https://x/m", error="e", description='say "hi"\n') == (
        'Bearer resource_metadata="https://x/m", error="e", error_description="say \\"hi\\" "'
    )


# --- WSGI -------------------------------------------------------------------------------------


def wsgi_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    claims = claims_of(environ)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"public" if claims is None else claims.subject.encode()]


def call_wsgi(
    path: str, header: str | None = None, method: str = "POST"
) -> tuple[str, dict[str, str], bytes]:
    environ: dict[str, Any] = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO()}
    wsgiref.util.setup_testing_defaults(environ)
    if header is not None:
        environ["HTTP_AUTHORIZATION"] = header
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        seen.update(status=status, headers=dict(headers))

    body = b"".join(wsgi.BearerAuthMiddleware(wsgi_app, protected())(environ, start_response))
    return seen["status"], seen["headers"], body


def test_wsgi_middleware() -> None:
    status, headers, _ = call_wsgi("/mcp")
    assert status == "401 Unauthorized"
    assert params(headers["WWW-Authenticate"])["resource_metadata"] == METADATA
    status, headers, _ = call_wsgi("/mcp/admin", f"Bearer {token()}")
    assert status == "403 Forbidden"
    assert params(headers["WWW-Authenticate"])["scope"] == "tools:admin"
    assert call_wsgi("/mcp", f"Bearer {token()}") == (
        "200 OK", {"Content-Type": "text/plain"}, b"agenttoken:agents:researcher"
    )  # fmt: skip
    status, _, body = call_wsgi("/.well-known/oauth-protected-resource/mcp", method="GET")
    assert status == "200 OK"
    assert json.loads(body)["resource"] == RESOURCE
    assert call_wsgi("/healthz")[2] == b"public"


# --- ASGI -------------------------------------------------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    claims = claims_of(request.scope)
    assert claims is not None
    assert request.state.agenttoken_claims is claims
    return JSONResponse({"sub": claims.subject, "scopes": list(claims.scopes)})


def test_asgi_middleware_in_front_of_starlette() -> None:
    app = asgi.BearerAuthMiddleware(Starlette(routes=[Route("/mcp", whoami, methods=["POST"])]), protected())

    async def run() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://tools.example.com") as client:
            denied = await client.post("/mcp")
            assert denied.status_code == 401
            assert params(denied.headers["www-authenticate"])["resource_metadata"] == METADATA
            forbidden = await client.post("/mcp", headers={"Authorization": f"Bearer {token(scopes=('x',))}"})
            assert forbidden.status_code == 403
            assert params(forbidden.headers["www-authenticate"])["error"] == "insufficient_scope"
            ok = await client.post("/mcp", headers={"Authorization": f"Bearer {token()}"})
            assert ok.status_code == 200
            assert ok.json() == {"sub": "agenttoken:agents:researcher", "scopes": ["tools:call"]}
            meta = await client.get("/.well-known/oauth-protected-resource/mcp")
            assert meta.json()["authorization_servers"] == [ISSUER]

    asyncio.run(run())


def test_asgi_passes_lifespan_through_and_closes_a_refused_websocket() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = asgi.BearerAuthMiddleware(app, protected(), offload=False)
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def run() -> None:
        await middleware({"type": "lifespan"}, receive, send)
        await middleware({"type": "websocket", "path": "/mcp", "headers": []}, receive, send)
        twice = [(b"authorization", f"Bearer {token()}".encode())] * 2
        await middleware({"type": "http", "method": "POST", "path": "/mcp", "headers": twice}, receive, send)

    asyncio.run(run())
    assert seen == ["lifespan"]
    assert sent[0] == {"type": "websocket.close", "code": 1008}
    assert sent[1]["status"] == 400  # two Authorization headers: invalid_request


def test_head_of_the_metadata_has_no_body() -> None:
    response = authorize(protected(), method="HEAD", path="/.well-known/oauth-protected-resource").response
    assert response is not None
    assert response.status == 200
    assert response.body == b""

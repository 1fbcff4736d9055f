"""The operator's HTTP endpoints: discovery, JWKS, client-assertion JWKS, revocation list, metrics,
health.

One small aiohttp app (aiohttp comes with kopf). Cache headers follow the key-overlap rules:
a new signing key is published `publish_ahead` before it signs, so verifiers may cache the JWKS
for half of that and still see every key before its first token; the revocation list is never
cached (a revocation must bite within a second), but carries an ETag so polling is cheap. The
revocation list served is the signed parts exactly as stored in the cluster (kept current by a
watch), so every replica serves the same bytes and none serves a list it signed in memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from agenttoken.controllers.keys import KeyManager, discovery_document
from agenttoken.controllers.podtokens import PodTokenService
from agenttoken.controllers.revocation import RevocationStore
from agenttoken.core.podtoken import TOKEN_PATH
from agenttoken.runtime.tokenendpoint import token_endpoint_metadata, token_handler

log = logging.getLogger(__name__)

JWK_SET_TYPE = "application/jwk-set+json"


def _issuer_path(issuer: str) -> str:
    """`https://host/issuers/builtin` -> `/issuers/builtin` (where the issuer's documents live)."""
    rest = issuer.split("://", 1)[-1]
    path = "/" + rest.split("/", 1)[1] if "/" in rest else ""
    return path.rstrip("/")


def _respond(request: web.Request, body: bytes, content_type: str, cache: str) -> web.Response:
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    headers = {"Cache-Control": cache, "ETag": etag}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, content_type=content_type, headers=headers)


def build_app(
    keys: KeyManager,
    revocations: RevocationStore,
    ready: Callable[[], bool] = lambda: True,
    pod_tokens: PodTokenService | None = None,
) -> web.Application:
    jwks_max_age = max(1, int(keys.policy.publish_ahead.total_seconds() / 2))
    base = _issuer_path(keys.issuer)

    async def discovery(request: web.Request) -> web.Response:
        doc = discovery_document(keys.issuer)
        if pod_tokens is not None:
            doc.update(token_endpoint_metadata(keys.issuer))
        body = json.dumps(doc, sort_keys=True).encode()
        return _respond(request, body, "application/json", f"public, max-age={jwks_max_age}")

    async def jwks(request: web.Request) -> web.Response:
        body = json.dumps(keys.jwks(), sort_keys=True).encode()
        return _respond(request, body, JWK_SET_TYPE, f"public, max-age={jwks_max_age}")

    async def client_jwks(request: web.Request) -> web.Response:
        # Client-assertion keys only: for the OAuth server, never for access-token verifiers.
        body = json.dumps(keys.client_jwks(), sort_keys=True).encode()
        return _respond(request, body, JWK_SET_TYPE, f"public, max-age={jwks_max_age}")

    async def revoked(request: web.Request) -> web.Response:
        body = json.dumps(revocations.document(), separators=(",", ":")).encode()
        return _respond(request, body, "application/json", "no-cache")

    async def metrics(request: web.Request) -> web.Response:
        # `?name[]=a&name[]=b` returns only those families (as prometheus_client's own handler
        # does): a cheap probe of one number even with per-AgentToken series for 10k objects.
        names = request.query.getall("name[]", [])
        resp = web.Response(body=generate_latest(REGISTRY.restricted_registry(names) if names else REGISTRY))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n") if ready() else web.Response(status=503, text="not ready\n")

    app = web.Application()
    routes: list[Any] = [web.get("/metrics", metrics), web.get("/healthz", healthz)]
    for prefix in {"", base}:
        routes += [
            web.get(f"{prefix}/.well-known/openid-configuration", discovery),
            web.get(f"{prefix}/jwks.json", jwks),
            web.get(f"{prefix}/client-jwks.json", client_jwks),
            web.get(f"{prefix}/revocations.json", revoked),
        ]
        if pod_tokens is not None:
            routes.append(web.post(f"{prefix}{TOKEN_PATH}", token_handler(pod_tokens)))
    app.add_routes(routes)
    return app


async def serve(app: web.Application, address: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    log.info("serving discovery, JWKS, revocations and metrics on http://%s:%d", address, port)
    return runner

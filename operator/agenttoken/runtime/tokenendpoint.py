"""HTTP face of the per-pod token endpoint (RFC 6749 section 5 answers, RFC 8414 metadata).

`POST <issuer>/token` with `application/x-www-form-urlencoded` `grant_type=urn:ietf:params:oauth:
grant-type:jwt-bearer&assertion=<projected ServiceAccount token>` (optional `scope`, `agenttoken`).
200 with the token (`Cache-Control: no-store`), 400/401 with `{"error", "error_description"}`,
429 with `Retry-After` when a pod or ServiceAccount asks too often, 503 when the cluster cannot
answer. The request body (the assertion) never reaches a log line or an error message.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agenttoken.controllers.podtokens import PodTokenService
from agenttoken.core.podtoken import JWT_BEARER, GrantError, token_endpoint

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MAX_BODY = 32 * 1024


def token_endpoint_metadata(issuer: str) -> dict[str, Any]:
    return {
        "token_endpoint": token_endpoint(issuer),
        "grant_types_supported": [JWT_BEARER],
        "token_endpoint_auth_methods_supported": ["none"],
    }


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


def token_handler(service: PodTokenService) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return _json(400, GrantError("invalid_request", "the body must be form-encoded").body())
        if (request.content_length or 0) > MAX_BODY:
            return _json(400, GrantError("invalid_request", "the request is too large").body())
        form = await request.post()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            answer = await service.grant(fields)
        except GrantError as exc:
            headers = {}
            if exc.retry_after is not None:
                headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
            if exc.status == 401:
                headers["WWW-Authenticate"] = 'Bearer error="invalid_client"'
            return _json(exc.status, exc.body(), headers)
        return _json(200, answer)

    return handle

"""ASGI middleware: agent tokens in front of any ASGI application (Starlette, FastAPI, an MCP server).

    from agenttoken_sdk.asgi import BearerAuthMiddleware
    app = BearerAuthMiddleware(mcp_app, protected)   # protected: agenttoken_sdk.protect.ProtectedResource

It serves the RFC 9728 metadata, refuses with the challenges agenttoken_sdk.protect describes, and
hands an accepted request to the application with the verified Claims in `scope["agenttoken.claims"]`
(also `scope["state"]["agenttoken_claims"]`, which Starlette shows as `request.state.agenttoken_claims`).

Plain ASGI 3, no framework. Verification runs in a worker thread (`asyncio.to_thread`) because the
Verifier may fetch the revocation list or the JWKS with a blocking call; pass offload=False when the
verifier only reads mounted files and you would rather not pay for the thread hop. Lifespan and
other non-HTTP scopes pass through; a refused WebSocket is closed with code 1008 (policy violation)
before it is accepted.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from agenttoken_sdk.protect import CLAIMS_KEY, Decision, ProtectedResource, authorize

__all__ = ["BearerAuthMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BearerAuthMiddleware:
    """Wraps an ASGI app; see the module docstring."""

    def __init__(self, app: ASGIApp, protected: ProtectedResource, *, offload: bool = True) -> None:
        self.app = app
        self.protected = protected
        self.offload = offload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        decision = await self._decide(scope)
        if decision.response is None:
            if decision.claims is not None:
                scope[CLAIMS_KEY] = decision.claims
                scope.setdefault("state", {})["agenttoken_claims"] = decision.claims
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await receive()  # websocket.connect
            await send({"type": "websocket.close", "code": 1008})
            return
        response = decision.response
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    async def _decide(self, scope: Scope) -> Decision:
        authorization = [
            value.decode("latin-1")
            for name, value in scope.get("headers", ())
            if name.lower() == b"authorization"
        ]
        client = scope.get("client")
        decide = functools.partial(
            authorize,
            self.protected,
            method=scope.get("method", "GET"),
            path=scope.get("path", "/"),
            authorization=authorization,
            client_address=client[0] if client else None,
        )
        return await asyncio.to_thread(decide) if self.offload else decide()

"""WSGI middleware: agent tokens in front of any WSGI application (Flask, Django, a bare callable).

    from agenttoken_sdk.wsgi import BearerAuthMiddleware
    app.wsgi_app = BearerAuthMiddleware(app.wsgi_app, protected)   # Flask

It serves the RFC 9728 metadata, refuses with the challenges agenttoken_sdk.protect describes, and
hands an accepted request to the application with the verified Claims in `environ["agenttoken.claims"]`.
The request path is SCRIPT_NAME + PATH_INFO: the path a client sees, which the resource URI and the
well-known paths are written in. The peer address is REMOTE_ADDR (behind a proxy that rewrites it,
CIDR-bound tokens see the proxy's address: set REMOTE_ADDR from a trusted header first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from agenttoken_sdk.protect import CLAIMS_KEY, ProtectedResource, authorize

__all__ = ["BearerAuthMiddleware"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class BearerAuthMiddleware:
    """Wraps a WSGI app; see the module docstring."""

    def __init__(self, app: WSGIApp, protected: ProtectedResource) -> None:
        self.app = app
        self.protected = protected

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        header = environ.get("HTTP_AUTHORIZATION")
        decision = authorize(
            self.protected,
            method=environ.get("REQUEST_METHOD", "GET"),
            path=environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", ""),
            # WSGI servers fold repeated headers into one comma-joined value; a comma cannot occur
            # in a bearer token, so bearer_token() refuses a folded value as malformed.
            authorization=[] if header is None else [header],
            client_address=environ.get("REMOTE_ADDR") or None,
        )
        if decision.response is None:
            if decision.claims is not None:
                environ[CLAIMS_KEY] = decision.claims
            return self.app(environ, start_response)
        response = decision.response
        start_response(f"{response.status} {response.reason}", list(response.headers))
        return [response.body]

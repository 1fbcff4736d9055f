"""An MCP server (official MCP Python SDK, streamable HTTP) that accepts agent tokens.

    pip install agent-token-sdk mcp uvicorn
    MCP_RESOURCE=https://tools.example.com/mcp \
    AGENTTOKEN_ISSUER=https://agent-token-operator.agenttoken-system.svc/issuers/builtin \
    AGENTTOKEN_URL=http://agent-token-operator.agenttoken-system.svc:8080 \
    python server.py

The SDK's ASGI middleware sits in front of the MCP app: it serves the RFC 9728 metadata, answers
401/403 with the challenges MCP clients understand, and lets through only tokens whose `aud` holds
MCP_RESOURCE and whose scopes cover the route. tests/e2e/test_mcp.py runs exactly this app.
"""

from __future__ import annotations

import os
from typing import Any

from mcp.server.mcpserver import MCPServer

from agenttoken_sdk.asgi import BearerAuthMiddleware
from agenttoken_sdk.protect import PUBLIC, ProtectedResource
from agenttoken_sdk.verify import Verifier

SCOPE = "tools:call"


def tools() -> MCPServer:
    server = MCPServer("agenttoken-demo-tools")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    return server


def build_app(*, resource: str, issuer: str, operator_url: str) -> Any:
    """The MCP app behind the middleware. resource: this server's canonical URI (the AgentTokens'
    audience); operator_url: where the operator serves /jwks.json and /revocations.json."""
    verifier = Verifier(
        issuer=issuer,
        audience=resource,
        jwks_url=f"{operator_url}/jwks.json",
        revocations_url=f"{operator_url}/revocations.json",
    )
    protected = ProtectedResource(
        verifier=verifier,
        resource=resource,
        routes={"/mcp": [SCOPE], "/healthz": PUBLIC},
        resource_name="agenttoken demo tools",
    )
    return BearerAuthMiddleware(tools().streamable_http_app(streamable_http_path="/mcp"), protected)


if __name__ == "__main__":
    import uvicorn

    app = build_app(
        resource=os.environ["MCP_RESOURCE"],
        issuer=os.environ["AGENTTOKEN_ISSUER"],
        operator_url=os.environ["AGENTTOKEN_URL"],
    )
    uvicorn.run(app, host="0.0.0.0", port=int(os.environ.get("PORT", "8000")))  # noqa: S104 (a pod)

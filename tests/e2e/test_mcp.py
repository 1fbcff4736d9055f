"""An MCP server built with the official MCP Python SDK, protected by agenttoken_sdk.asgi, verifying
tokens the operator minted: the acceptance of [agents] for MCP-ready resource servers.

The server is examples/mcp-server/server.py, run over streamable HTTP under uvicorn on a loopback
port, so its canonical resource URI is `http://127.0.0.1:<port>/mcp` (http is admitted for
loopback hosts only). The official client's own helpers read our challenge and discover our
metadata, and its Client lists and calls a tool with a real AgentToken; tokens for another
resource or without the scope never reach it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.auth.utils import (
    build_protected_resource_metadata_discovery_urls,
    extract_resource_metadata_from_www_auth,
    extract_scope_from_www_auth,
    handle_protected_resource_response,
)
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import ProtectedResourceMetadata
from mcp.shared.auth_utils import resource_url_from_server_url
from mcp.types import CallToolResult

from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import ISSUER, agenttoken, secret_data, wait_ready

SCOPE = "tools:call"
BIN = Path(sys.executable).parent
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mcp-server" / "server.py"


@dataclass(frozen=True)
class McpServer:
    url: str  # the MCP endpoint, also the canonical resource URI

    @property
    def origin(self) -> str:
        return self.url.removesuffix("/mcp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def example_server() -> ModuleType:
    """examples/mcp-server/server.py, the app the docs show: tested here so it cannot rot."""
    spec = importlib.util.spec_from_file_location("mcp_example_server", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mcp_server(operator: OperatorProcess) -> Iterator[McpServer]:
    port = free_port()
    resource = f"http://127.0.0.1:{port}/mcp"
    app = example_server().build_app(resource=resource, issuer=ISSUER, operator_url=operator.base_url)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none"))
    thread = threading.Thread(target=server.run, name="mcp-server", daemon=True)
    thread.start()
    wait_for("the MCP server to listen", lambda: server.started, timeout=30)
    try:
        yield McpServer(resource)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def minted(kube: Kube, namespace: str, name: str, audience: str, scopes: list[str]) -> str:
    kube.apply(agenttoken(name, f"{name}-token", audience=[audience], scopes=scopes), "-n", namespace)
    wait_ready(kube, namespace, name)
    data = secret_data(kube, namespace, f"{name}-token")  # records the token for the leak scan
    assert data is not None
    return data["token"]


def initialize(server: McpServer, token: str | None) -> httpx.Response:
    """The first request an MCP client sends, with or without a token."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "probe", "version": "0"}},
    }  # fmt: skip
    return httpx.post(server.url, headers=headers, content=json.dumps(body), timeout=30)


def test_no_token_gets_401_and_the_official_client_discovers_our_metadata(mcp_server: McpServer) -> None:
    response = initialize(mcp_server, None)
    assert response.status_code == 401
    challenge = httpx2.Response(response.status_code, headers=dict(response.headers))
    metadata_url = extract_resource_metadata_from_www_auth(challenge)
    assert metadata_url == f"{mcp_server.origin}/.well-known/oauth-protected-resource/mcp"
    assert extract_scope_from_www_auth(challenge) == SCOPE
    assert "error=" not in response.headers["www-authenticate"]  # no token, no error code (RFC 6750)

    async def discover() -> list[ProtectedResourceMetadata | None]:
        found = []
        async with httpx2.AsyncClient() as client:
            for url in build_protected_resource_metadata_discovery_urls(metadata_url, mcp_server.url):
                found.append(await handle_protected_resource_response(await client.get(url)))
        return found

    # Every URL the client would try (the challenge's, the path-suffixed and the root form) answers.
    documents = asyncio.run(discover())
    assert len(documents) == 3
    for doc in documents:
        assert doc is not None
        assert str(doc.resource) == mcp_server.url == resource_url_from_server_url(mcp_server.url)
        assert [str(a) for a in doc.authorization_servers] == [ISSUER]
        assert doc.scopes_supported == [SCOPE]
        assert doc.bearer_methods_supported == ["header"]
    assert httpx.get(f"{mcp_server.origin}/healthz", timeout=10).status_code == 404  # public: reaches the app


def test_a_token_for_another_resource_gets_401_invalid_token(
    kube: Kube, operator: OperatorProcess, namespace: str, mcp_server: McpServer
) -> None:
    other = minted(kube, namespace, "mcp-other", "https://other.example.com/mcp", [SCOPE])
    response = initialize(mcp_server, other)
    assert response.status_code == 401
    www = response.headers["www-authenticate"]
    assert 'error="invalid_token"' in www
    assert 'error_description="token rejected: aud"' in www
    assert other not in response.text


def test_a_token_without_the_scope_gets_403_insufficient_scope(
    kube: Kube, operator: OperatorProcess, namespace: str, mcp_server: McpServer
) -> None:
    reader = minted(kube, namespace, "mcp-reader", mcp_server.url, ["tools:read"])
    response = initialize(mcp_server, reader)
    assert response.status_code == 403
    www = response.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in www
    assert f'scope="{SCOPE}"' in www
    assert f'resource_metadata="{mcp_server.origin}/.well-known/oauth-protected-resource/mcp"' in www


def test_a_valid_agenttoken_lets_the_official_client_list_and_call_a_tool(
    kube: Kube, operator: OperatorProcess, namespace: str, mcp_server: McpServer
) -> None:
    token = minted(kube, namespace, "mcp-caller", mcp_server.url, [SCOPE])

    async def session() -> tuple[list[str], CallToolResult]:
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30)
        async with http, Client(streamable_http_client(mcp_server.url, http_client=http)) as client:
            tools = await client.list_tools()
            result = await client.call_tool("add", {"a": 20, "b": 22})
            return [t.name for t in tools.tools], result

    names, result = asyncio.run(session())
    assert names == ["add"]
    assert not result.is_error
    assert result.structured_content == {"result": 42}


@pytest.mark.parametrize(
    ("audience", "message"),
    [
        ("HTTPS://tools.example.com/mcp", "lowercase scheme"),
        ("https://Tools.example.com/mcp", "lowercase host"),
        ("https://tools.example.com/mcp#x", "must not have a query or a fragment"),
        ("http://tools.agents.svc/mcp", "must use https"),
    ],
)
def test_admission_refuses_non_canonical_resource_uris(
    kube: Kube, crds: object, namespace: str, audience: str, message: str
) -> None:
    body = agenttoken("bad-resource", "bad-resource-token", audience=[audience])
    result = kube.apply(body, "-n", namespace, "--dry-run=server", check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_a_revoked_token_is_refused_within_a_second(
    kube: Kube, operator: OperatorProcess, namespace: str, mcp_server: McpServer
) -> None:
    token = minted(kube, namespace, "mcp-revoked", mcp_server.url, [SCOPE])
    assert initialize(mcp_server, token).status_code == 200
    cli = subprocess.run(
        [str(BIN / "agenttoken"), "revoke", "mcp-revoked", "-n", namespace, "--no-rotate"],
        env=kube.env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr

    def refused() -> str | None:
        response = initialize(mcp_server, token)
        return response.headers.get("www-authenticate") if response.status_code == 401 else None

    # The verifier re-reads the list every 0.5 s (revocations_max_age); the deadline leaves room
    # for a loaded machine, the bound itself is measured in tests/e2e/test_sdk.py.
    www = wait_for("the MCP server to refuse the revoked token", refused, timeout=5, interval=0.05)
    assert 'error_description="token rejected: revoked"' in www

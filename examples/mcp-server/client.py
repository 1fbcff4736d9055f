"""The agent's side: call the MCP server's tools with the token the operator keeps in a Secret.

python client.py https://tools.example.com/mcp /var/run/agenttoken
"""

from __future__ import annotations

import asyncio
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from agenttoken_sdk.client import TokenSource


async def main(url: str, token_dir: str) -> None:
    source = TokenSource(token_dir)
    # A fresh Authorization header per connection: TokenSource follows the operator's renewals.
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {source.token()}"}, timeout=30)
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        tools = await client.list_tools()
        print([t.name for t in tools.tools])
        print((await client.call_tool("add", {"a": 20, "b": 22})).structured_content)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

"""Makes the `spec.verify` request with a new token; `core.connectivity` judges the answer.

The response body is never read: only the status code counts, and a body could echo the
token back. Errors are reported by kind, never with exception text that might quote headers.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from agenttoken.core.connectivity import Result, VerifySpec, judge


async def check(spec: VerifySpec, token: str, *, ca_bundle: str | None = None) -> Result:
    ssl_context: ssl.SSLContext | bool = True
    if ca_bundle:
        try:
            ssl_context = ssl.create_default_context(cadata=ca_bundle)
        except (ssl.SSLError, ValueError):
            return Result(False, f"{spec.target}: the CA bundle is not valid PEM")
    timeout = aiohttp.ClientTimeout(total=spec.timeout.total_seconds())
    headers = {"Authorization": f"Bearer {token}", "User-Agent": "agent-token-operator/verify"}
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(
                spec.method, spec.url, headers=headers, ssl=ssl_context, allow_redirects=False
            ) as resp,
        ):
            return judge(spec, resp.status)
    except TimeoutError:
        return Result(False, f"{spec.target} did not answer within {spec.timeout.total_seconds():g}s")
    except aiohttp.ClientConnectorCertificateError:
        return Result(False, f"{spec.target}: TLS certificate not trusted (check caBundle)")
    except aiohttp.ClientError as exc:
        return Result(False, f"{spec.target} unreachable: {type(exc).__name__}")
    except asyncio.CancelledError:
        raise
    except (OSError, ValueError) as exc:
        return Result(False, f"{spec.target} failed: {type(exc).__name__}")

"""The connectivity check before delivery: the `spec.verify` request with a new token, made
before it reaches the Secret; `core.connectivity` judges the answer.

The response body is never read: only the status code counts, and a body could echo the
token back. Errors are reported by kind, never with exception text that might quote headers.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from agenttoken.core.connectivity import Result, VerifySpec, judge
from agenttoken.core.model import AgentTokenSpec
from agenttoken.core.secretdata import decode_data
from agenttoken.kube.adapter import Kube


async def verify_new_token(kube: Kube, namespace: str, spec: AgentTokenSpec, token: str) -> Result:
    """spec.verify with the new token; the CA bundle inline or from a ConfigMap/Secret here."""
    verify = spec.verify
    assert verify is not None
    ca = verify.ca_bundle
    if verify.ca_ref is not None:
        ref = verify.ca_ref
        if ref.kind == "Secret":
            body = await kube.get_secret(namespace, ref.name)
            ca = decode_data((body or {}).get("data")).get(ref.key)
        else:
            body = await kube.get_configmap(namespace, ref.name)
            ca = ((body or {}).get("data") or {}).get(ref.key)
        if not ca:
            return Result(False, f"caBundleRef: {ref.kind} {ref.name} (key {ref.key!r}) not found")
    return await check(verify, token, ca_bundle=ca)


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

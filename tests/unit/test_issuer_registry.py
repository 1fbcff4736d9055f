"""One Issuer protocol: the registry picks the adapter by type; readiness problems per type."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from typing import Any, cast

from agenttoken import api
from agenttoken.core.keys import generate_key
from agenttoken.core.model import parse_spec
from agenttoken.issuers import IssueContext, parse_issuer
from agenttoken.issuers.credentials import IssuerDeps
from agenttoken.issuers.oauth2 import OAuth2Issuer, build_form
from agenttoken.issuers.registry import Registry
from agenttoken.kube.adapter import Kube


def unverified_header(token: str) -> dict[str, Any]:
    head = token.split(".")[0]
    return cast(dict[str, Any], json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4))))


T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


class SecretsKube:
    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]]) -> None:
        self.secrets = secrets

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        data = self.secrets.get((namespace, name))
        if data is None:
            return None
        return {"data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def issuer(kind: str, spec: dict[str, Any], namespace: str = "team") -> Any:
    return parse_issuer(kind, {"metadata": {"name": "i", "namespace": namespace}, "spec": spec})


ACCESS_KEY = generate_key("ES256", T0 - dt.timedelta(hours=1))
ASSERTION_KEY = generate_key("ES256", T0 - dt.timedelta(hours=1))


def deps(kube: SecretsKube, *, keys: bool = True) -> IssuerDeps:
    def key(k: Any) -> Any:
        def get() -> Any:
            if not keys:
                raise RuntimeError("no signing key yet")
            return k

        return get

    return IssuerDeps(
        cast(Kube, kube), key(ACCESS_KEY), "https://issuer", "agenttoken-system", key(ASSERTION_KEY)
    )


def registry(kube: SecretsKube, *, keys: bool = True) -> Registry:
    return Registry(deps(kube, keys=keys))


def test_client_assertions_use_the_assertion_key_and_subject_tokens_the_access_key() -> None:
    """Purpose-separated keys: the client assertion is signed by the assertion key (published only
    in client-jwks.json), the subject token (a token for the provider) by the access-token key."""
    config = {
        "tokenURL": "https://idp/token",
        "clientID": "agent",
        "clientAuthMethod": "private_key_jwt",
        "grant": "jwt_bearer",
    }
    spec = parse_spec({"audience": ["https://api"], "ttl": "1h", "secret": {"name": "tok"}})
    ctx = IssueContext(request=spec.token_request("team", "agent", "uid-1"), secret_name="tok")
    adapter = OAuth2Issuer(deps(SecretsKube({})))
    creds = asyncio.run(adapter.credentials(issuer("TokenIssuer", {"oauth2": config}), ctx, T0))
    assert creds.signing_key is ASSERTION_KEY
    assert creds.subject_token is not None
    assert unverified_header(creds.subject_token)["kid"] == ACCESS_KEY.kid
    form, _ = build_form(ctx.request, config, creds, endpoint="https://idp/token", now=T0)
    assert unverified_header(form["client_assertion"])["kid"] == ASSERTION_KEY.kid


def test_the_builtin_adapter_mints_through_the_registry() -> None:
    spec = parse_spec({"audience": ["https://api"], "ttl": "1h", "secret": {"name": "tok"}})
    ctx = IssueContext(request=spec.token_request("team", "agent", "uid-1"), secret_name="tok")
    reg = registry(SecretsKube({}))
    builtin = issuer(api.TOKENISSUER_KIND, {"builtin": {}})
    issued = asyncio.run(reg.issue(builtin, ctx, T0))
    assert issued.expires_at == T0 + dt.timedelta(hours=1)
    assert not reg.adapter(builtin).binds_to_secret
    assert reg.adapter(
        issuer(api.TOKENISSUER_KIND, {"kubernetes": {"serviceAccountName": "sa"}})
    ).binds_to_secret


def test_readiness_problems_by_type() -> None:
    webhook = issuer(
        api.TOKENISSUER_KIND, {"webhook": {"url": "https://m", "authSecretRef": {"name": "cred"}}}
    )
    cluster_oauth = issuer(
        api.CLUSTERTOKENISSUER_KIND,
        {"oauth2": {"tokenURL": "https://t", "clientID": "c", "clientSecretRef": {"name": "oauth"}}},
        namespace="",
    )
    builtin = issuer(api.TOKENISSUER_KIND, {"builtin": {}})
    empty = registry(SecretsKube({}), keys=False)
    problem = asyncio.run(empty.problem(webhook))
    assert problem is not None
    assert problem.reason == "CredentialsNotFound"
    assert "team/cred" in problem.message
    problem = asyncio.run(empty.problem(cluster_oauth))
    assert problem is not None
    assert "agenttoken-system/oauth" in problem.message
    problem = asyncio.run(empty.problem(builtin))
    assert problem is not None
    assert problem.reason == "KeysNotReady"
    ready = registry(
        SecretsKube({("team", "cred"): {"token": "t"}, ("agenttoken-system", "oauth"): {"clientSecret": "s"}})
    )
    assert [asyncio.run(ready.problem(i)) for i in (webhook, cluster_oauth, builtin)] == [None, None, None]

"""The oauth2 issuer's token request: grants, client authentication, subject tokens (pure parts)."""

from __future__ import annotations

import base64
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jwt

from agenttoken.core.keys import generate_key, jws_registry
from agenttoken.core.model import InvalidSpec
from agenttoken.core.tokens import TokenRequest
from agenttoken.issuers import IssueError, parse_issuer
from agenttoken.issuers.oauth2 import (
    ASSERTION_TYPE,
    GRANT_TYPES,
    JWT_TOKEN_TYPE,
    Credentials,
    build_form,
    subject_request,
    uses_builtin_keys,
)

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ENDPOINT = "https://idp.example.com/realms/a/protocol/openid-connect/token"
REQ = TokenRequest(
    namespace="team-a",
    name="bot",
    uid="u-1",
    subject=None,
    audience=("https://tickets.example.com",),
    scopes=("tickets:read",),
    ttl=timedelta(hours=1),
)


def form(config: dict[str, Any], creds: Credentials) -> tuple[dict[str, str], dict[str, str]]:
    return build_form(REQ, {"clientID": "bot", **config}, creds, endpoint=ENDPOINT, now=T0)


def test_client_credentials_with_basic_auth() -> None:
    body, headers = form({"sendAudience": True}, Credentials(client_secret="p:ss wörd"))
    assert body == {
        "grant_type": "client_credentials",
        "scope": "tickets:read",
        "audience": "https://tickets.example.com",
        "resource": "https://tickets.example.com",
    }
    user, password = base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode().split(":")
    assert (user, password) == ("bot", "p%3Ass%20w%C3%B6rd")  # RFC 6749 2.3.1: form-encoded first


def test_private_key_jwt_assertion() -> None:
    key = generate_key("ES256", T0 - timedelta(days=1))
    body, headers = form({"clientAuthMethod": "private_key_jwt"}, Credentials(signing_key=key))
    assert "Authorization" not in headers
    assert body["client_id"] == "bot"
    assert body["client_assertion_type"] == ASSERTION_TYPE
    token = jwt.decode(
        body["client_assertion"], key.joserfc_key, algorithms=["ES256"], registry=jws_registry()
    )
    assert token.header["kid"] == key.kid
    claims = token.claims
    assert (claims["iss"], claims["sub"], claims["aud"]) == ("bot", "bot", ENDPOINT)
    assert claims["exp"] - claims["iat"] == 60
    again, _ = form({"clientAuthMethod": "private_key_jwt"}, Credentials(signing_key=key))
    other = jwt.decode(
        again["client_assertion"], key.joserfc_key, algorithms=["ES256"], registry=jws_registry()
    )
    assert other.claims["jti"] != claims["jti"], "an assertion is single-use"


@pytest.mark.parametrize(
    ("grant", "field"), [("token_exchange", "subject_token"), ("jwt_bearer", "assertion")]
)
def test_assertion_grants_send_the_subject_token(grant: str, field: str) -> None:
    config = {"grant": grant, "subjectIssuer": "operator", "requestedTokenType": "urn:x"}
    body, _ = form(config, Credentials(client_secret="s", subject_token="subj.ect.token"))
    assert body["grant_type"] == GRANT_TYPES[grant]
    assert body[field] == "subj.ect.token"
    if grant == "token_exchange":
        assert body["subject_token_type"] == JWT_TOKEN_TYPE
        assert (body["subject_issuer"], body["requested_token_type"]) == ("operator", "urn:x")
    else:
        assert "subject_token_type" not in body
    with pytest.raises(IssueError, match="needs a subject token"):
        form({"grant": grant}, Credentials(client_secret="s"))


def test_missing_credentials_are_refused() -> None:
    with pytest.raises(IssueError, match="client-assertion key"):
        form({"clientAuthMethod": "private_key_jwt"}, Credentials())
    with pytest.raises(IssueError, match="client secret"):
        form({}, Credentials())


def test_subject_request_is_short_and_for_the_provider() -> None:
    claimed = dataclasses.replace(REQ, subject="admin")
    sub = subject_request(claimed, {"issuerURL": "https://idp.example.com/realms/a"})
    assert sub.subject is None, "the subject token names the AgentToken, never a claimed spec.subject"
    assert sub.audience == ("https://idp.example.com/realms/a",)
    assert sub.scopes == REQ.scopes
    assert sub.ttl == timedelta(minutes=2)
    assert subject_request(REQ, {"subjectToken": {"audience": ["x"]}}).audience == ("x",)


def test_which_configs_use_the_builtin_keys() -> None:
    assert uses_builtin_keys({"clientAuthMethod": "private_key_jwt"})
    assert uses_builtin_keys({"grant": "jwt_bearer"})
    assert not uses_builtin_keys({"grant": "jwt_bearer", "subjectToken": {"source": "serviceAccount"}})
    assert not uses_builtin_keys({})


@pytest.mark.parametrize(
    ("oauth2", "message"),
    [
        ({"tokenURL": "https://i/t", "clientID": "x"}, "clientSecretRef"),
        (
            {
                "tokenURL": "https://i/t",
                "clientID": "x",
                "clientAuthMethod": "private_key_jwt",
                "grant": "jwt_bearer",
                "subjectToken": {"source": "serviceAccount"},
            },
            "serviceAccountName",
        ),
    ],
)
def test_parse_rejects(oauth2: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSpec, match=message):
        parse_issuer("TokenIssuer", {"metadata": {"name": "x"}, "spec": {"oauth2": oauth2}})


def test_private_key_jwt_needs_no_secret() -> None:
    spec = {"oauth2": {"tokenURL": "https://i/t", "clientID": "x", "clientAuthMethod": "private_key_jwt"}}
    assert parse_issuer("TokenIssuer", {"metadata": {"name": "x"}, "spec": spec}).type == "oauth2"

"""The built-in issuer: JWTs (RFC 9068) signed by the operator's own rotating keys."""

from __future__ import annotations

import datetime
import uuid

from agenttoken.core.conditions import Reason
from agenttoken.core.keys import SigningKey
from agenttoken.core.tokens import mint
from agenttoken.issuers import IssueContext, Issued, IssuerSpec
from agenttoken.issuers.credentials import IssuerDeps, keys_problem


def issue(ctx: IssueContext, key: SigningKey, *, issuer_url: str, now: datetime.datetime) -> Issued:
    minted = mint(ctx.request, key, issuer=issuer_url, now=now, jti=str(uuid.uuid4()))
    return Issued(minted.token, minted.token_id, minted.key_id, minted.issued_at, minted.expires_at)


class BuiltinIssuer:
    binds_to_secret = False

    def __init__(self, deps: IssuerDeps) -> None:
        self.deps = deps

    async def issue(self, issuer: IssuerSpec, ctx: IssueContext, now: datetime.datetime) -> Issued:
        return issue(ctx, self.deps.signing_key(), issuer_url=self.deps.issuer_url, now=now)

    async def problem(self, issuer: IssuerSpec) -> Reason | None:
        return keys_problem(self.deps)

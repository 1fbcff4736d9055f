"""The built-in issuer: JWTs (RFC 9068) signed by the operator's own rotating keys."""

from __future__ import annotations

import datetime
import uuid

from agenttoken.core.keys import SigningKey
from agenttoken.core.tokens import mint
from agenttoken.issuers import IssueContext, Issued


def issue(ctx: IssueContext, key: SigningKey, *, issuer_url: str, now: datetime.datetime) -> Issued:
    minted = mint(ctx.request, key, issuer=issuer_url, now=now, jti=str(uuid.uuid4()))
    return Issued(minted.token, minted.token_id, minted.key_id, minted.issued_at, minted.expires_at)

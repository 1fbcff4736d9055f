"""One `Issuer` protocol and the registry that picks the adapter for an issuer's type.

The controller only calls the registry: a new issuer type is a module with a class implementing
`Issuer` and one line in `Registry.__init__`.
"""

from __future__ import annotations

import datetime
from typing import Protocol

from agenttoken.core.conditions import Reason
from agenttoken.issuers import IssueContext, Issued, IssuerSpec, IssuerType
from agenttoken.issuers.builtin import BuiltinIssuer
from agenttoken.issuers.credentials import IssuerDeps
from agenttoken.issuers.kubernetes import KubernetesIssuer
from agenttoken.issuers.oauth2 import OAuth2Issuer
from agenttoken.issuers.webhook import WebhookIssuer


class Issuer(Protocol):
    # The token is bound to the Secret holding it: the Secret must exist before minting, and the
    # controller passes its uid in IssueContext.secret_uid.
    binds_to_secret: bool

    async def issue(self, issuer: IssuerSpec, ctx: IssueContext, now: datetime.datetime) -> Issued:
        """A new token for ctx.request; IssueError (never with token material) when that fails."""
        ...

    async def problem(self, issuer: IssuerSpec) -> Reason | None:
        """Why this issuer cannot mint right now (keys not loaded, credentials missing), if so."""
        ...


class Registry:
    def __init__(self, deps: IssuerDeps) -> None:
        self._by_type: dict[IssuerType, Issuer] = {
            "builtin": BuiltinIssuer(deps),
            "kubernetes": KubernetesIssuer(deps),
            "webhook": WebhookIssuer(deps),
            "oauth2": OAuth2Issuer(deps),
        }

    def adapter(self, issuer: IssuerSpec) -> Issuer:
        return self._by_type[issuer.type]

    async def issue(self, issuer: IssuerSpec, ctx: IssueContext, now: datetime.datetime) -> Issued:
        return await self.adapter(issuer).issue(issuer, ctx, now)

    async def problem(self, issuer: IssuerSpec) -> Reason | None:
        return await self.adapter(issuer).problem(issuer)

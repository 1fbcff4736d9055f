"""One reconcile pass of one AgentToken: what every step gets (the body, its parsed spec, the
issuer it may use, the time the pass started)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from agenttoken import api
from agenttoken.core.model import AgentTokenSpec, TokenStatus
from agenttoken.issuers import IssuerSpec

Key = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Pass:
    body: dict[str, Any]
    spec: AgentTokenSpec
    issuer: IssuerSpec
    previous: TokenStatus  # status as it was when the pass started
    now: datetime.datetime

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def secret_key(self) -> Key:
        return (self.namespace, self.spec.secret_name)


def involved(body: dict[str, Any]) -> dict[str, Any]:
    """An AgentToken as an Event's involvedObject."""
    meta = body["metadata"]
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.AGENTTOKEN_KIND,
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta["uid"],
    }

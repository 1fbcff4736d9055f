"""The leak scan's haystacks and needles, shared by the e2e suite's last checks (test_zz_final)
and the reliability run's (tests/reliability/test_9_leaks): every text a token or a signing key
must never reach, and how to find one in it.

Report counts only, never a match: printing a token or key on failure would itself be a leak.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from agenttoken import api

from .kube import Kube
from .operator import OperatorProcess, is_revocation_list

# Token parts and key members are base64url runs; any text holding one holds it as a whole run
# (bounded by `.`, quotes or other punctuation), so comparing sets of runs finds every copy and
# scales to thousands of tokens against a long audit log.
RUN = re.compile(r"[A-Za-z0-9_-]{16,}")
# A JWT's signature is >= 43 characters (HS256); 16 already rules out prose and ids.
JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")
RINGS = ("keyring.json", "assertion-keyring.json")  # access-token keys, OAuth client-assertion keys
SIGNING_KEYS = ("agenttoken-system", "agenttoken-signing-keys")
# Managed Secrets hold tokens by design: this haystack is scanned for signing keys only.
SECRETS_DATA = "other secrets' data"


def haystacks(kube: Kube, operator: OperatorProcess, **extra: str) -> dict[str, str]:
    """Every place the operator writes text to, by name: its log and metrics, Events, AgentToken
    status and annotations, issuer status, ConfigMaps, every Secret's metadata, and the data of
    every Secret but the key ring's own; plus `extra` (name: text)."""
    secrets = json.loads(kube.kubectl("get", "secrets", "-A", "-o", "json").stdout)["items"]
    return {
        "operator log": operator.log_text(),
        "metrics": operator.metrics(),
        "events": kube.kubectl("get", "events", "-A", "-o", "json").stdout,
        "agenttokens (status, annotations)": kube.kubectl("get", "agenttokens", "-A", "-o", "json").stdout,
        "issuers": kube.kubectl("get", ",".join(api.ISSUER_PLURALS.values()), "-A", "-o", "json").stdout,
        "configmaps": kube.kubectl("get", "configmaps", "-A", "-o", "json").stdout,
        "secret metadata": json.dumps([s["metadata"] for s in secrets]),
        SECRETS_DATA: "\n".join(
            base64.b64decode(v).decode(errors="replace")
            for s in secrets
            if (s["metadata"]["namespace"], s["metadata"]["name"]) != SIGNING_KEYS
            for v in (s.get("data") or {}).values()
        ),
        **extra,
    }


def private_key_members(secret: dict[str, Any]) -> set[str]:
    """The private members of every key of both rings in the key ring's Secret (each ring must
    hold at least one key)."""
    members: set[str] = set()
    for name in RINGS:
        ring = json.loads(base64.b64decode(secret["data"][name]))
        found = {k["jwk"][m] for k in ring["keys"] for m in PRIVATE_MEMBERS if m in k["jwk"]}
        assert found, f"no private key members in {name}"
        members |= found
    return members


def jwt_shaped(text: str) -> int:
    """How many JWT-shaped strings `text` holds, but for parts of the signed revocation list (a
    public JWS in ConfigMaps, typed never to pass as a token)."""
    return sum(1 for m in JWT_SHAPE.finditer(text) if not is_revocation_list(m.group()))

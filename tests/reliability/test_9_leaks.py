"""[measure] reliability 5: leak scan over the entire reliability run (runs last, file order).
Operator logs, Events, status, annotations, ConfigMaps, the audit log and the metrics output
contain no byte of any minted token or of the signing keys (both rings: access-token keys and
OAuth client-assertion keys). Tokens are those every managed Secret held during the run (a Secret
watch), plus whatever the Secrets hold now. Client assertions are never stored anywhere; the
JWT-shape scan finds them wherever they would appear."""

from __future__ import annotations

import base64
import json
import re

from devcluster import LocalCluster
from tests.e2e.kube import Kube
from tests.e2e.operator import OperatorProcess, is_revocation_list

from .conftest import MANAGED, TokenCollector
from .support import get, secret_data

JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}")
# Token parts and key members are base64url runs; any text holding one holds it as a whole run
# (bounded by `.`, quotes or other punctuation), so comparing sets of runs finds every copy and
# scales to thousands of tokens against a long audit log.
RUN = re.compile(r"[A-Za-z0-9_-]{16,}")
PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi")


RINGS = ("keyring.json", "assertion-keyring.json")


def signing_key_material(cluster: LocalCluster) -> list[str]:
    """Private members of every key of both rings (each ring must hold at least one key)."""
    secret = get(cluster, "/api/v1/namespaces/agenttoken-system/secrets/agenttoken-signing-keys")
    data = secret_data(secret)
    members = []
    for name in RINGS:
        ring = json.loads(data[name])
        found = [k["jwk"][m] for k in ring["keys"] for m in PRIVATE_MEMBERS if m in k["jwk"]]
        assert found, f"no private key members in {name}"
        members += found
    return members


def test_no_token_or_signing_key_byte_anywhere_but_secrets(
    kube: Kube, cluster: LocalCluster, operator: OperatorProcess, seen_tokens: TokenCollector
) -> None:
    for secret in get(cluster, f"/api/v1/secrets?labelSelector={MANAGED}")["items"]:
        seen_tokens.add_secret(secret)
    tokens = seen_tokens.tokens
    assert len(tokens) >= 20, f"only {len(tokens)} tokens seen: run after the other reliability tests"
    # Payload and signature of every token, each on its own (a partial leak is a leak); the
    # header is shared by all tokens of one key and says nothing secret.
    needles = {part for token in tokens for part in token.split(".")[1:]}
    keys = signing_key_material(cluster)
    assert keys, "no private key members found in the key ring"

    secrets = get(cluster, "/api/v1/secrets")["items"]
    # The key ring's own Secret is where the keys live; any other Secret holding a key is a leak.
    other_secret_data = [
        s.get("data") or {}
        for s in secrets
        if (s["metadata"]["namespace"], s["metadata"]["name"])
        != ("agenttoken-system", "agenttoken-signing-keys")
    ]
    haystacks = {
        "operator log": operator.log_text(),
        "metrics": operator.metrics(),
        "events": kube.kubectl("get", "events", "-A", "-o", "json").stdout,
        "agenttokens (status, annotations)": kube.kubectl("get", "agenttokens", "-A", "-o", "json").stdout,
        "issuers": kube.kubectl("get", "tokenissuers,clustertokenissuers", "-A", "-o", "json").stdout,
        "configmaps": kube.kubectl("get", "configmaps", "-A", "-o", "json").stdout,
        "workloads": kube.kubectl("get", "deployments,replicasets,pods", "-A", "-o", "json").stdout,
        "secret metadata": json.dumps([s["metadata"] for s in secrets]),
        "other secrets' data": "\n".join(
            base64.b64decode(v).decode(errors="replace") for d in other_secret_data for v in d.values()
        ),
        "audit log": "\n".join(p.read_text(errors="replace") for p in cluster.logs.glob("audit*.log")),
    }
    for where, text in haystacks.items():
        runs = set(RUN.findall(text))
        leaked_keys = len(set(keys) & runs)
        assert leaked_keys == 0, f"{leaked_keys} private key member(s) found in {where}"
        if where == "other secrets' data":
            continue  # managed Secrets hold tokens by design; only keys must not be there
        # Report counts only: printing a token or key on failure would itself be a leak.
        leaked = len(needles & runs)
        assert leaked == 0, f"{leaked} token part(s) found in {where}"
        # The signed revocation list is a public JWS in ConfigMaps, typed never to pass as a token.
        found = [m.group() for m in JWT_SHAPE.finditer(text) if not is_revocation_list(m.group())]
        assert not found, f"{len(found)} JWT-shaped string(s) found in {where}"
    print(
        f"\nleaks: {len(tokens)} tokens and {len(keys)} private key members, none in {len(haystacks)} places"
    )

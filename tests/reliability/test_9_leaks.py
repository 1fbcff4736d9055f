"""[measure] reliability 5: leak scan over the entire reliability run (runs last, file order).
Operator logs, Events, status, annotations, ConfigMaps, the audit log and the metrics output
contain no byte of any minted token or of the signing keys (both rings: access-token keys and
OAuth client-assertion keys). Tokens are those every managed Secret held during the run (a Secret
watch), plus whatever the Secrets hold now. Client assertions are never stored anywhere; the
JWT-shape scan finds them wherever they would appear."""

from __future__ import annotations

from devcluster import LocalCluster
from tests.e2e import leaks
from tests.e2e.kube import Kube
from tests.e2e.operator import OperatorProcess

from .conftest import MANAGED, TokenCollector
from .support import get


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
    namespace, name = leaks.SIGNING_KEYS
    keys = leaks.private_key_members(get(cluster, f"/api/v1/namespaces/{namespace}/secrets/{name}"))
    haystacks = leaks.haystacks(
        kube,
        operator,
        workloads=kube.kubectl("get", "deployments,replicasets,pods", "-A", "-o", "json").stdout,
        **{"audit log": "\n".join(p.read_text(errors="replace") for p in cluster.logs.glob("audit*.log"))},
    )
    for where, text in haystacks.items():
        runs = set(leaks.RUN.findall(text))
        leaked_keys = len(keys & runs)
        assert leaked_keys == 0, f"{leaked_keys} private key member(s) found in {where}"
        if where == leaks.SECRETS_DATA:
            continue  # managed Secrets hold tokens by design; only keys must not be there
        # Report counts only: printing a token or key on failure would itself be a leak.
        leaked = len(needles & runs)
        assert leaked == 0, f"{leaked} token part(s) found in {where}"
        found = leaks.jwt_shaped(text)
        assert not found, f"{found} JWT-shaped string(s) found in {where}"
    print(
        f"\nleaks: {len(tokens)} tokens and {len(keys)} private key members, none in {len(haystacks)} places"
    )

"""The signed revocation list against a real control plane: verifiers outlive the operator, and the
list stays within its bound at 20,000 live revocations.

The list is what the operator stored in the cluster (ConfigMaps agenttoken-revocations-<i>), signed
with its signing key; these tests check it with the SDK verifier exactly as an API would, over
HTTP from the operator and from the ConfigMaps as mounted files (no operator involved).
"""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from pathlib import Path
from typing import Any

from agenttoken import api
from agenttoken.controllers.keys import KEYS_SECRET, RING_KEY
from agenttoken.controllers.revocation import PART_CONFIGMAPS, PENDING_CONFIGMAP, PENDING_KEY, part_key
from agenttoken.core import revocation
from agenttoken.core.keys import KeyRing, SigningKey
from agenttoken.core.revocation import Revoked
from agenttoken.core.tokens import TokenRequest, mint
from agenttoken_sdk.verify import VerificationError, Verifier

from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import ISSUER, agenttoken, frozen_secrets, secret_data, status, wait_ready
from .test_sdk import cli

SYSTEM = "agenttoken-system"
AUDIENCE = "https://api.example.com"


def rejected_check(v: Verifier, token: str) -> str | None:
    try:
        v.verify(token)
    except VerificationError as exc:
        return exc.check
    return None


def http_verifier(operator: OperatorProcess) -> Verifier:
    return Verifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_url=f"{operator.base_url}/jwks.json",
        revocations_url=f"{operator.base_url}/revocations.json",
        audit=False,
    )


def mount(kube: Kube, directory: Path) -> tuple[Path, Path]:
    """What a projected volume of the part ConfigMaps (and the JWKS ConfigMap) shows a pod."""
    parts = directory / "revocations"
    parts.mkdir(exist_ok=True)
    for i, name in enumerate(PART_CONFIGMAPS):
        cm = kube.get_json("configmap", name, "-n", SYSTEM)
        assert cm is not None, f"{name} missing"
        (parts / part_key(i)).write_text(cm["data"][part_key(i)])
    jwks = directory / "jwks.json"
    cm = kube.get_json("configmap", "agenttoken-jwks", "-n", SYSTEM)
    assert cm is not None
    jwks.write_text(cm["data"]["jwks.json"])
    return parts, jwks


def file_verifier(parts_dir: Path, jwks_file: Path) -> Verifier:
    """An API that never calls the operator: keys and list from the mounted ConfigMaps."""
    return Verifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_path=str(jwks_file),
        revocations_path=str(parts_dir),
        audit=False,
    )


def stored_parts(kube: Kube) -> list[str]:
    out = []
    for i, name in enumerate(PART_CONFIGMAPS):
        cm = kube.get_json("configmap", name, "-n", SYSTEM)
        out.append(((cm or {}).get("data") or {}).get(part_key(i), ""))
    return out


def test_revoked_stays_rejected_and_valid_stays_accepted_while_the_operator_is_down(
    kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    for name in ("outage-doomed", "outage-spared"):
        kube.apply(agenttoken(name, f"{name}-token", audience=[AUDIENCE]), "-n", namespace)
    for name in ("outage-doomed", "outage-spared"):
        wait_ready(kube, namespace, name)
    doomed = (secret_data(kube, namespace, "outage-doomed-token") or {})["token"]
    spared = (secret_data(kube, namespace, "outage-spared-token") or {})["token"]

    # The CLI holds no key: it returns once the operator signed the id into the list.
    revoke = cli(kube, "revoke", "outage-doomed", "-n", namespace, "--no-rotate")
    assert revoke.returncode == 0, revoke.stderr
    over_http = http_verifier(operator)
    assert rejected_check(over_http, doomed) == "revoked"
    assert rejected_check(over_http, spared) is None
    from_files = file_verifier(*mount(kube, tmp_path))
    assert rejected_check(from_files, doomed) == "revoked"
    assert rejected_check(from_files, spared) is None

    operator.kill9()  # every operator pod gone: nothing answers on its port, nobody signs
    try:
        # Through the outage the HTTP verifier keeps its last good list (and JWKS); the mounted
        # files need no operator at all. Checked repeatedly: each check after max age refetches.
        deadline = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5)
        while datetime.datetime.now(datetime.UTC) < deadline:
            for v in (over_http, from_files):
                assert rejected_check(v, doomed) == "revoked"
                assert rejected_check(v, spared) is None
        # The CLI verifies from the ConfigMaps too: no operator needed.
        result = cli(kube, "verify", "outage-spared", "-n", namespace, "--audience", AUDIENCE)
        assert result.returncode == 0, result.stderr
        result = cli(kube, "verify", "outage-doomed", "-n", namespace, "--audience", AUDIENCE)
        assert result.returncode == 1
        assert "INVALID (revoked)" in result.stderr
        # A revocation while no operator runs cannot be signed: the CLI says so, keeps it pending.
        late = cli(kube, "revoke", "outage-spared", "-n", namespace, "--no-rotate", "--wait", "2")
        assert late.returncode == 2, late.stderr
        assert "PENDING" in late.stderr
        assert rejected_check(from_files, spared) is None  # not signed: verifiers cannot see it yet
    finally:
        operator.start()
    # The operator back: the pending revocation is signed in, and bites.
    after = http_verifier(operator)
    wait_for(
        "the pending revocation signed in", lambda: rejected_check(after, spared) == "revoked", timeout=60
    )


def test_a_tampered_stored_list_is_refused_by_verifiers(
    kube: Kube, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Someone between the verifier and the cluster (or with write access to one ConfigMap)
    swaps in an unsigned list: the verifier refuses it and fails closed rather than use it."""
    parts_dir, jwks_file = mount(kube, tmp_path)
    (parts_dir / part_key(0)).write_text(json.dumps({"revoked": []}))
    v = file_verifier(parts_dir, jwks_file)
    key = signing_key(kube)
    token = mint(request(), key, issuer=ISSUER, now=datetime.datetime.now(datetime.UTC)).token
    assert rejected_check(v, token) == "revoked"  # failing closed: no genuine list


def signing_key(kube: Kube) -> SigningKey:
    """The operator's current signing key, read from its Secret (the test is cluster admin):
    tokens with chosen ids, signed exactly as the operator signs."""
    secret = kube.get_json("secret", KEYS_SECRET, "-n", SYSTEM)
    assert secret is not None
    ring = KeyRing.from_json(base64.b64decode(secret["data"][RING_KEY]).decode())
    key = ring.signing_key(datetime.datetime.now(datetime.UTC))
    assert key is not None
    return key


def request() -> TokenRequest:
    return TokenRequest(
        namespace="bulk", name="bulk", uid="u", subject=None, audience=(AUDIENCE,), scopes=(),
        ttl=datetime.timedelta(hours=2),
    )  # fmt: skip


def put_pending(kube: Kube, entries: list[Revoked]) -> None:
    """What `agenttoken revoke` writes, in bulk: once the operator emptied the pending document."""

    def empty() -> bool:
        cm = kube.get_json("configmap", PENDING_CONFIGMAP, "-n", SYSTEM)
        return not revocation.from_json(((cm or {}).get("data") or {}).get(PENDING_KEY, ""))

    wait_for("the pending revocations to be folded in", empty, timeout=120, interval=0.5)
    body = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": PENDING_CONFIGMAP, "namespace": SYSTEM},
        "data": {PENDING_KEY: revocation.to_json(entries)},
    }
    kube.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=e2e", "-f", "-",
                 input=json.dumps(body))  # fmt: skip


def test_twenty_thousand_revocations_and_compaction_stay_within_the_bound(
    kube: Kube, operator: OperatorProcess
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    live = [
        Revoked(str(uuid.uuid4()), now + datetime.timedelta(hours=2), "bulk", "bulk", now, "Revoked")
        for _ in range(20_000)
    ]
    # Ids whose tokens expired long ago: compaction must drop them, not carry them.
    expired = [
        Revoked(str(uuid.uuid4()), now - datetime.timedelta(hours=1), "bulk", "bulk", now, "Revoked")
        for _ in range(5_000)
    ]
    # As the CLI would leave them, 5,000 at a time (the pending document is one ConfigMap too).
    batches = [live[i : i + 4_000] + expired[i // 4 : i // 4 + 1_000] for i in range(0, len(live), 4_000)]
    for batch in batches:
        put_pending(kube, batch)

    wanted = {e.token_id for e in live}

    def listed() -> set[str] | None:
        parts = [revocation.read_part(p) for p in stored_parts(kube)]
        ids = {jti for p in parts if p is not None for jti in p.revoked}
        return ids if wanted <= ids else None

    ids = wait_for("20,000 revocations on the signed list", listed, timeout=300, interval=2)
    assert not ids & {e.token_id for e in expired}, "expired ids were compacted away"
    sizes = [len(p) for p in stored_parts(kube)]
    assert all(size <= revocation.MAX_PART_BYTES for size in sizes), sizes
    print(f"\n20,000 live revocations: parts {sizes} bytes, {sum(sizes) / len(ids):.1f} bytes per entry")

    # Every still-valid revoked id is rejected by the SDK verifier, over HTTP from the operator.
    key = signing_key(kube)
    v = http_verifier(operator)
    signed_at = datetime.datetime.now(datetime.UTC)
    accepted = [
        e.token_id
        for e in live
        if rejected_check(v, mint(request(), key, issuer=ISSUER, now=signed_at, jti=e.token_id).token)
        != "revoked"
    ]
    assert accepted == []
    assert rejected_check(v, mint(request(), key, issuer=ISSUER, now=signed_at).token) is None


def test_status_does_not_lie_when_no_operator_runs_or_renewal_cannot_land(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """EXPIRES in `kubectl get`, `agenttoken status` against the clock while no operator runs, and
    a `kubectl wait`-able Ready=False TokenExpired from the operator once a token passed expiry
    without a renewal."""
    kube.apply(agenttoken("lapsing", "lapsing-token", ttl="60s"), "-n", namespace)
    wait_ready(kube, namespace, "lapsing")
    expires_at = status(kube, namespace, "lapsing")["expiresAt"]
    table = kube.kubectl("get", "agenttoken", "lapsing", "-n", namespace).stdout
    assert "EXPIRES" in table.splitlines()[0]
    assert expires_at in table

    operator.kill9()
    restarted = False
    try:

        def reported() -> dict[str, Any] | None:
            result = cli(kube, "status", "lapsing", "-n", namespace, "-o", "json")
            item: dict[str, Any] = json.loads(result.stdout)
            return item if item["reason"] == api.REASON_EXPIRED else None

        item = wait_for("agenttoken status to say the token expired", reported, timeout=120, interval=2)
        assert item["ready"] == "False"
        stored = {c["type"]: c for c in status(kube, namespace, "lapsing")["conditions"]}
        assert stored["Ready"]["status"] == "True", "nothing ran to change the stored status"

        with frozen_secrets(kube, namespace):  # no renewal can land once it is back
            operator.start()
            restarted = True
            waited = kube.kubectl(
                "wait", "agenttoken/lapsing", "-n", namespace, "--for=condition=Ready=false", "--timeout=90s",
                check=False,
            )  # fmt: skip
            assert waited.returncode == 0, waited.stderr
            body = kube.get_json("agenttoken", "lapsing", "-n", namespace)
            assert body is not None
            ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
            assert ready["reason"] == api.REASON_EXPIRED
            assert ready["observedGeneration"] == body["metadata"]["generation"]
    finally:
        if not restarted:
            operator.start()

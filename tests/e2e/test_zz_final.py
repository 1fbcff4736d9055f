"""Checks over everything the suite did; runs last (file order)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

from . import leaks
from .kube import Kube
from .operator import OperatorProcess
from .test_key_revocation import SEEN_ASSERTIONS
from .test_lifecycle import SEEN_TOKENS
from .test_practices_delivery import NEVER_DELIVERED


def test_objects_carry_no_kopf_bookkeeping(kube: Kube, operator: OperatorProcess) -> None:
    tokens = kube.get_json("agenttokens", "-A")
    assert tokens is not None
    assert tokens["items"], "run after the lifecycle tests"
    for obj in tokens["items"]:
        meta = obj["metadata"]
        assert not [a for a in meta.get("annotations", {}) if "kopf.zalando.org" in a], meta
        assert not [f for f in meta.get("finalizers", []) if "kopf" in f], meta


def test_every_stop_of_the_operator_was_clean(operator: OperatorProcess) -> None:
    """The suite restarts the operator several times (SIGTERM): none of those stops printed a
    traceback (e.g. an Event batched before the stop and posted after the session closed:
    "RuntimeError: Session is closed"). Tracebacks of logged errors sit inside JSON records."""
    raw = [line for line in operator.log_text().splitlines() if line.startswith("Traceback")]
    assert not raw, f"{len(raw)} traceback(s) printed outside the JSON log"


def test_minted_tokens_appear_nowhere_but_their_secrets(kube: Kube, operator: OperatorProcess) -> None:
    # A bare len(SEEN_TOKENS) in the assert would make pytest print the set (the tokens) on failure.
    seen = len(SEEN_TOKENS)
    assert seen >= 5, "run after the lifecycle tests"
    # The review command prints everything it knows about every AgentToken.
    review = subprocess.run(
        [str(Path(sys.executable).parent / "agenttoken"), "audit", "-A", "-o", "json"],
        env=kube.env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    for where, text in leaks.haystacks(
        kube, operator, **{"agenttoken audit": review.stdout + review.stderr}
    ).items():
        if where == leaks.SECRETS_DATA:
            continue  # managed Secrets hold their tokens by design
        # Report only a count: printing a token on failure would itself be a leak.
        leaked = sum(1 for token in SEEN_TOKENS if token in text)
        assert leaked == 0, f"{leaked} minted token(s) found in {where}"


def test_tokens_held_back_by_verify_reached_no_secret(kube: Kube, operator: OperatorProcess) -> None:
    if not NEVER_DELIVERED:
        return  # the spec.verify tests did not run in this session
    secrets = kube.kubectl("get", "secrets", "-A", "-o", "json").stdout
    # Secret data is base64: compare decoded values, and report only a count.
    values = {
        base64.b64decode(v).decode(errors="replace")
        for s in json.loads(secrets)["items"]
        for v in (s.get("data") or {}).values()
    }
    leaked = sum(1 for token in NEVER_DELIVERED if any(token in v for v in values))
    assert leaked == 0, f"{leaked} token(s) that failed spec.verify found in Secret data"


def test_no_jwt_appears_in_logs_events_or_status(kube: Kube, operator: OperatorProcess) -> None:
    """Tokens that are never stored (client assertions, subject tokens for token exchange and
    jwt-bearer) or that other checks do not know: nothing JWT-shaped outside Secrets."""
    for where, text in leaks.haystacks(kube, operator).items():
        if where != leaks.SECRETS_DATA:
            found = leaks.jwt_shaped(text)
            assert not found, f"{found} JWT-shaped string(s) in {where}"


def test_signing_keys_and_client_assertions_appear_nowhere(kube: Kube, operator: OperatorProcess) -> None:
    """Both key rings (access-token and client-assertion keys) stay in their Secret; the client
    assertions the operator sent (and the access token forged with the assertion key) appear in no
    log, Event, status, annotation, ConfigMap or metric. Counts only, never the values."""
    secret = kube.get_json("secret", leaks.SIGNING_KEYS[1], "-n", leaks.SIGNING_KEYS[0])
    assert secret is not None
    keys = leaks.private_key_members(secret)
    assertions = {part for a in SEEN_ASSERTIONS for part in a.split(".")[1:]}
    for where, text in leaks.haystacks(kube, operator).items():
        runs = set(leaks.RUN.findall(text))
        assert not keys & runs, f"{len(keys & runs)} private key member(s) in {where}"
        assert not assertions & runs, f"{len(assertions & runs)} client assertion part(s) in {where}"

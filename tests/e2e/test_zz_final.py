"""Checks over everything the suite did; runs last (file order)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

from .kube import Kube
from .operator import OperatorProcess
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


def test_minted_tokens_appear_nowhere_but_their_secrets(kube: Kube, operator: OperatorProcess) -> None:
    # A bare len(SEEN_TOKENS) in the assert would make pytest print the set (the tokens) on failure.
    seen = len(SEEN_TOKENS)
    assert seen >= 5, "run after the lifecycle tests"
    haystacks = {
        "operator log": operator.log_text(),
        "events": kube.kubectl("get", "events", "-A", "-o", "json").stdout,
        "agenttokens": kube.kubectl("get", "agenttokens", "-A", "-o", "json").stdout,
        "configmaps": kube.kubectl("get", "configmaps", "-A", "-o", "json").stdout,
    }
    # The review command prints everything it knows about every AgentToken.
    review = subprocess.run(
        [str(Path(sys.executable).parent / "agenttoken"), "audit", "-A", "-o", "json"],
        env=kube.env, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    haystacks["agenttoken audit"] = review.stdout + review.stderr
    # Secret metadata (annotations, labels) must not carry the token either.
    secrets = json.loads(kube.kubectl("get", "secrets", "-A", "-o", "json").stdout)
    haystacks["secret metadata"] = json.dumps([s["metadata"] for s in secrets["items"]])
    for where, text in haystacks.items():
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
    jwt_shape = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
    haystacks = {
        "operator log": operator.log_text(),
        "events": kube.kubectl("get", "events", "-A", "-o", "json").stdout,
        "agenttokens": kube.kubectl("get", "agenttokens", "-A", "-o", "json").stdout,
        "issuers": kube.kubectl("get", "tokenissuers,clustertokenissuers", "-A", "-o", "json").stdout,
        "configmaps": kube.kubectl("get", "configmaps", "-A", "-o", "json").stdout,
    }
    for where, text in haystacks.items():
        assert not jwt_shape.search(text), f"a JWT-shaped string in {where}"

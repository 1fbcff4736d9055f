"""Checks over everything the suite did; runs last (file order)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .kube import Kube
from .operator import OperatorProcess
from .test_lifecycle import SEEN_TOKENS


def test_objects_carry_no_kopf_bookkeeping(kube: Kube, operator: OperatorProcess) -> None:
    tokens = kube.get_json("agenttokens", "-A")
    assert tokens is not None
    assert tokens["items"], "run after the lifecycle tests"
    for obj in tokens["items"]:
        meta = obj["metadata"]
        assert not [a for a in meta.get("annotations", {}) if "kopf.zalando.org" in a], meta
        assert not [f for f in meta.get("finalizers", []) if "kopf" in f], meta


def test_minted_tokens_appear_nowhere_but_their_secrets(kube: Kube, operator: OperatorProcess) -> None:
    assert len(SEEN_TOKENS) >= 5, "run after the lifecycle tests"
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

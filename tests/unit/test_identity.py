"""Identity integrity without a cluster: a webhook's token claims, names Kubernetes admits
(label values, Event names), the conflicting-Secret watch, and the admission policy's rules."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from agenttoken import api
from agenttoken.controllers.conflicts import ConflictWatch
from agenttoken.core import names
from agenttoken.core.model import InvalidSpec, parse_spec
from agenttoken.core.names import event_name
from agenttoken.core.rollout import annotation_key
from agenttoken.core.secretdata import desired_secret_metadata, managed_labels, owner_name
from agenttoken.issuers import IssueContext, Issued, PolicyRefused, parse_issuer
from agenttoken.issuers.webhook import check_answer, jwt_claims
from agenttoken.kube.adapter import Kube

REPO = Path(__file__).resolve().parents[2]
T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LONGEST = "a" + "-b" * 125 + "c"  # 253 characters: the longest AgentToken name Kubernetes admits


# -- a webhook's answer --


def jwt(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.c2ln"


def ctx(subject: str | None = None) -> IssueContext:
    raw: dict[str, Any] = {"audience": ["https://api"], "ttl": "1h", "secret": {"name": "tok"}}
    if subject:
        raw["subject"] = subject
    return IssueContext(request=parse_spec(raw).token_request("team", "agent", "uid"), secret_name="tok")


def webhook(policy: dict[str, Any] | None = None) -> Any:
    spec: dict[str, Any] = {"webhook": {"url": "https://m"}}
    if policy is not None:
        spec["policy"] = policy
    return parse_issuer(api.TOKENISSUER_KIND, {"metadata": {"name": "m", "namespace": "team"}, "spec": spec})


def answer(token: str, lifetime: dt.timedelta = dt.timedelta(hours=1)) -> Issued:
    return Issued(token, "id", "webhook", T0, T0 + lifetime)


def test_a_webhook_token_living_beyond_max_ttl_is_refused() -> None:
    issuer = webhook({"maxTTL": "1h"})
    check_answer(issuer, ctx(), answer("opaque", dt.timedelta(hours=1, seconds=30)), "https://m")  # skew
    with pytest.raises(PolicyRefused, match="beyond the issuer's maxTTL 1h"):
        check_answer(issuer, ctx(), answer("opaque", dt.timedelta(hours=5)), "https://m")


@pytest.mark.parametrize(
    ("token", "policy", "refused"),
    [
        ("opaque-token", None, False),  # no claims to read: the webhook answers for it
        (jwt({"sub": "agenttoken:team:agent"}), None, False),
        (jwt({"sub": "admin"}), None, True),  # another sub than the policy allows
        (jwt({"sub": "agenttoken:other:payments"}), {"allowedSubjects": ["*"]}, True),
        (jwt({"sub": "svc-agent"}), {"allowedSubjects": ["svc-{name}"]}, False),
        (jwt({"sub": "agenttoken:team:agent", "scope": "admin"}), {"allowedScopes": ["read"]}, True),
    ],
)
def test_a_webhook_token_with_a_forbidden_claim_is_refused(
    token: str, policy: dict[str, Any] | None, refused: bool
) -> None:
    issued = answer(token)
    if not refused:
        check_answer(webhook(policy), ctx(), issued, "https://m")
        return
    with pytest.raises(PolicyRefused) as caught:
        check_answer(webhook(policy), ctx(), issued, "https://m")
    assert "outside the issuer's policy" in str(caught.value)
    assert token not in str(caught.value)


def test_jwt_claims_reads_only_compact_jws_payloads() -> None:
    assert jwt_claims(jwt({"sub": "x"})) == {"sub": "x"}
    for text in ("opaque", "a.b", "a.!!!.c", f"a.{base64.urlsafe_b64encode(b'[1]').decode()}.c"):
        assert jwt_claims(text) is None


@pytest.mark.parametrize("subject", ["with space", "tab\there", "new\nline", "nul\x00", " lead"])
def test_subjects_with_spaces_or_control_characters_are_invalid(subject: str) -> None:
    with pytest.raises(InvalidSpec, match=r"spec\.subject"):
        parse_spec({"audience": ["a"], "ttl": "1h", "secret": {"name": "t"}, "subject": subject})


# -- every name Kubernetes admits --


def test_names_that_fit_are_kept_and_longer_ones_become_valid_distinct_label_values() -> None:
    assert names.fit("agent") == "agent"
    assert names.fit("a" * 63) == "a" * 63
    other = LONGEST[:-1] + "d"
    for name in (LONGEST, other, "x" * 64, "a" * 39 + "-" + "b" * 30, "a" * 39 + "." + "b" * 30):
        value = names.fit(name)
        assert len(value) <= 63, value
        assert LABEL_VALUE.fullmatch(value), value
    assert names.fit(LONGEST) != names.fit(other)


def test_the_longest_name_gets_a_secret_kubernetes_accepts_and_is_found_again() -> None:
    spec = parse_spec({"audience": ["a"], "ttl": "1h", "secret": {"name": "t"}})
    labels = managed_labels(LONGEST, spec)
    assert all(len(v) <= 63 and LABEL_VALUE.fullmatch(v) for v in labels.values())
    body = desired_secret_metadata(namespace="ns", name=LONGEST, uid="u", spec=spec)
    assert owner_name(body) == LONGEST  # the full name, through the ownerReference
    key = annotation_key(LONGEST)
    assert len(key.split("/", 1)[1]) <= 63


def test_owner_name_falls_back_to_the_label_of_a_handed_over_secret() -> None:
    assert owner_name({"metadata": {"labels": {api.LABEL_AGENTTOKEN: "agent"}}}) == "agent"
    assert owner_name({"metadata": {}}) is None
    foreign_owner = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "d"}
    assert owner_name({"metadata": {"ownerReferences": [foreign_owner]}}) is None


@pytest.mark.parametrize("name", [LONGEST, "a" * 236 + "-b" * 8, "agent", "a" * 235 + ".b" * 9])
def test_event_names_stay_valid_for_every_involved_name(name: str) -> None:
    made = event_name(name)
    assert len(made) <= 253, made
    assert DNS_SUBDOMAIN.fullmatch(made), made
    assert made != event_name(name)  # unique per Event


# -- a conflicting Secret that resolves itself --


class WatchKube:
    """One Secret's watch, fed by the test: what `Kube.watch_secret` yields."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.since: list[str | None] = []

    async def watch_secret(
        self, namespace: str, name: str, since: str | None = None
    ) -> AsyncIterator[dict[str, Any] | None]:
        self.since.append(since)
        while True:
            yield await self.events.get()


def test_deleting_or_changing_the_conflicting_secret_looks_at_the_agenttoken_again() -> None:
    async def run() -> list[tuple[str, str]]:
        kube = WatchKube()
        seen: list[tuple[str, str]] = []
        watch = ConflictWatch(cast(Kube, kube), seen.append)
        secret = {"metadata": {"name": "tok", "resourceVersion": "5"}}
        watch.watch(("ns", "agent"), ("ns", "tok"), secret)
        watch.watch(("ns", "agent"), ("ns", "tok"), secret)  # the next pass: the same watch
        await kube.events.put(secret)  # the state it was decided on, replayed: nothing to do
        await kube.events.put({"metadata": {"name": "tok", "resourceVersion": "6"}})  # labelled
        await kube.events.put(None)  # deleted
        for _ in range(50):
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.01)
        assert kube.since == ["5"]  # one watch, from the version the conflict was decided on
        watch.release(("ns", "agent"))
        assert not watch.watching(("ns", "agent"))
        await watch.stop()
        return seen

    assert asyncio.run(run()) == [("ns", "agent"), ("ns", "agent")]


def test_conflict_watches_are_capped() -> None:
    async def run() -> None:
        watch = ConflictWatch(cast(Kube, WatchKube()), lambda key: None, limit=2)
        for i in range(3):
            watch.watch(("ns", f"a{i}"), ("ns", f"s{i}"), None)
        assert [watch.watching(("ns", f"a{i}")) for i in range(3)] == [True, True, False]
        await watch.stop()

    asyncio.run(run())


# -- the admission policy --


def admission_policy_text() -> str:
    return (REPO / "charts/agent-token-operator/templates/admission-policy.yaml").read_text()


def test_the_admission_policy_parses_durations_only_after_their_shape_is_checked() -> None:
    """An issuer stored before the CRD bounded minTTL/maxTTL may hold `99999999h`: duration()
    of it fails the rule with a CEL error; each rule checks the shape of both operands first."""
    text = admission_policy_text()
    crd = yaml.safe_load((REPO / "crds/agenttoken.dev_agenttokens.yaml").read_text())
    ttl_rule = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "ttl"
    ]["x-kubernetes-validations"][0]["rule"]
    shape = re.search(r"matches\('([^']+)'\)", ttl_rule).group(1)  # type: ignore[union-attr]
    expressions = [r.split("\n      reason:")[0] for r in re.split(r"\n    - expression:", text)[1:]]
    rules = [r for r in expressions if "duration(" in r]
    assert len(rules) == 2, rules
    for rule in rules:
        for operand in set(re.findall(r"duration\(([\w.]+)\)", rule)):
            assert f"!{operand}.matches('{shape}')" in rule, f"{operand} unguarded in {rule}"


def test_the_invariants_policy_has_no_params_and_checks_the_subject() -> None:
    text = admission_policy_text()
    invariants = text.split("-agenttoken-invariants", 1)[1].split("kind: ValidatingAdmissionPolicyBinding")[0]
    assert "paramKind" not in invariants
    assert "lowerAscii().startsWith('agenttoken:' + request.namespace + ':')" in invariants

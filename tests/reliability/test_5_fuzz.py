"""[measure] reliability 4: hypothesis-generated AgentToken manifests against the real apiserver.
Each is rejected with a message, or accepted and ends Ready or Stalled with a reason; the
operator never crashes (alive, no traceback in its log); no Secret is written for a Stalled one.

Manifests are mostly near-valid (so many get past admission and exercise the operator), with
wrong types, out-of-range values, unknown fields, missing issuers, issuer policies they break,
and Secret names that collide with each other or with a Secret someone else owns.
"""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devcluster import LocalCluster
from tests.e2e.kube import Kube, wait_for
from tests.e2e.operator import OperatorProcess

from .conftest import Size
from .support import GROUP_PATH, condition, get, new_namespace

DURATIONS = ["60s", "59s", "1m", "90s", "15m", "1h", "1h30m", "168h", "169h", "0s", "1.5h", "500ms",
             "10m", "2h", "1d", "-1h", "", "h", "7d", "99999h"]  # fmt: skip
NAMES = st.from_regex(r"\A[a-z0-9]([-a-z0-9.]{0,30}[a-z0-9])?\Z")
WEIRD = st.one_of(
    st.text(max_size=40), st.integers(), st.none(), st.booleans(), st.lists(st.text(max_size=5), max_size=3)
)


def maybe(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the well-formed value, sometimes something of the wrong shape."""
    return st.one_of(*[good] * 6, WEIRD)


SCOPE = st.one_of(
    st.from_regex(r"\A[A-Za-z0-9._:/*-]{1,20}\Z"), st.sampled_from(["tickets:read", "admin", "a b", ""])
)
AUDIENCE = st.one_of(
    st.sampled_from(["https://api.example.com", "https://tickets.example.com", "x"]), st.text(max_size=30)
)
DURATION = st.one_of(st.sampled_from(DURATIONS), st.from_regex(r"\A[0-9]{1,6}(ms|s|m|h)\Z"))
ISSUER_REF = st.one_of(
    st.just({}),
    st.fixed_dictionaries({}, optional={"kind": st.sampled_from(["ClusterTokenIssuer", "TokenIssuer", "Issuer"]),
                                        "name": st.sampled_from(["builtin", "fuzz-strict", "missing", "", "fuzz-local"])}),
)  # fmt: skip
SECRET = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["shared", "taken", "tok-a", "tok-b"]), NAMES, st.text(max_size=10))},
    optional={
        "keys": st.fixed_dictionaries({}, optional={k: st.sampled_from(["token", "expires-at", "token.json", "a", "b/c"])
                                                    for k in ("token", "expiresAt", "bundle")}),
        "template": st.fixed_dictionaries({}, optional={
            "labels": st.dictionaries(st.sampled_from(["app", "team", "app.kubernetes.io/managed-by"]), st.text(max_size=8), max_size=3),
            "annotations": st.dictionaries(st.sampled_from(["note", "agenttoken.dev/x", "example.com/y"]), st.text(max_size=8), max_size=3),
        }),
        "extra": st.just("field"),
    },
)  # fmt: skip
TARGET = st.one_of(
    st.fixed_dictionaries({"kind": st.sampled_from(["Deployment", "StatefulSet", "DaemonSet", "Pod"]),
                           "name": st.sampled_from(["fuzz-app", "missing", ""])}),
    st.fixed_dictionaries({"selector": st.fixed_dictionaries({"matchLabels": st.dictionaries(
        st.sampled_from(["app", "fuzz"]), st.sampled_from(["yes", "fuzz-app"]), max_size=2)})}),
    st.fixed_dictionaries({}, optional={"name": st.just("x"), "selector": st.just({"matchLabels": {"a": "b"}})}),
)  # fmt: skip
ROLLOUT = st.fixed_dictionaries(
    {},
    optional={
        "strategy": st.sampled_from(["Restart", "None", "Sometimes"]),
        "targets": st.lists(TARGET, max_size=3),
        "autoDiscover": maybe(st.booleans()),
        "revokeAfter": DURATION,
    },
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
        "audience": maybe(st.lists(AUDIENCE, max_size=3)),
        "scopes": maybe(st.lists(SCOPE, max_size=4)),
        "ttl": maybe(DURATION),
        "renewBefore": DURATION,
        "renewBeforePercentage": maybe(st.integers(min_value=-5, max_value=110)),
        "subject": maybe(st.text(max_size=20)),
        "issuerRef": maybe(ISSUER_REF),
        "secret": maybe(SECRET),
        "environment": maybe(st.one_of(NAMES, st.text(max_size=8))),
        "allowedCIDRs": maybe(st.lists(st.sampled_from(["10.0.0.0/8", "10.0.0.1/8", "fd00::/8", "nope", "0.0.0.0/0"]),
                                       max_size=3)),
        "rollout": maybe(ROLLOUT),
        "suspend": maybe(st.booleans()),
        "unknownField": st.just(1),
}  # fmt: skip
SPEC = st.fixed_dictionaries({}, optional=FIELDS)
# One or two fields on a valid core: most of these pass admission and exercise the operator.
FEW = st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=2, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries({k: FIELDS[k] for k in keys})
)
# A valid core most of the time, so that plenty of manifests reach the operator.
CORE = st.fixed_dictionaries(
    {"audience": st.just(["https://api.example.com"]), "ttl": st.sampled_from(["1h", "60s", "168h"]),
     "secret": st.fixed_dictionaries({"name": st.one_of(st.sampled_from(["shared", "taken"]), NAMES)})}
)  # fmt: skip
MANIFEST_SPEC = st.one_of(
    SPEC,
    st.builds(lambda core, spec: core | spec, CORE, SPEC),
    *[st.builds(lambda core, spec: core | spec, CORE, FEW)] * 3,
)

PRE_ISSUE_STALLS = {"InvalidSpec", "IssuerNotFound", "IssuerNotReady", "PolicyViolation", "SecretConflict"}


def fuzz_fixtures(kube: Kube, ns: str) -> None:
    """What manifests may refer to: a strict local issuer, a Secret someone else owns, a workload."""
    policy = {"allowedScopes": ["tickets:*"], "allowedAudiences": ["https://tickets.example.com"],
              "minTTL": "5m", "maxTTL": "2h"}  # fmt: skip
    for name, kind, spec in (
        ("fuzz-local", "TokenIssuer", {"builtin": {}, "policy": policy}),
        ("fuzz-strict", "TokenIssuer", {"builtin": {}, "policy": policy | {"allowedScopes": []}}),
    ):
        kube.apply(json.dumps({"apiVersion": "agenttoken.dev/v1alpha1", "kind": kind,
                               "metadata": {"name": name, "namespace": ns}, "spec": spec}))  # fmt: skip
    kube.apply(json.dumps({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "taken", "namespace": ns},
                           "stringData": {"token": "someone else's"}}))  # fmt: skip


def verdict(obj: dict[str, Any]) -> str | None:
    """Ready, Stalled:<reason>, Suspended, or None while still undecided."""
    gen = obj["metadata"]["generation"]
    ready, stalled = condition(obj, "Ready"), condition(obj, "Stalled")
    if ready.get("observedGeneration") != gen:
        return None
    if stalled.get("status") == "True":
        assert stalled.get("reason"), f"Stalled without a reason: {stalled}"
        return f"Stalled:{stalled['reason']}"
    if ready.get("status") == "True":
        return "Ready"
    if ready.get("reason") == "Suspended":
        return "Suspended"
    return None


def post_batch(
    cluster: LocalCluster, ns: str, n: int, counts: dict[str, int], reasons: dict[str, int]
) -> int:
    """`n` hypothesis-generated manifests POSTed into `ns`; returns how many were posted."""
    seq = iter(range(1_000_000))

    @settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(spec=MANIFEST_SPEC)
    def probe(spec: dict[str, Any]) -> None:
        name = f"f{next(seq)}"
        manifest = {"apiVersion": "agenttoken.dev/v1alpha1", "kind": "AgentToken",
                    "metadata": {"name": name}, "spec": spec}  # fmt: skip
        code, body = cluster.api("POST", f"{GROUP_PATH}/namespaces/{ns}/agenttokens", manifest, timeout=30)
        assert code < 500, f"HTTP {code}: {body[:300]!r}"
        if code == 201:
            return
        message = json.loads(body).get("message", "")
        # 400/422: the schema or the CRD's CEL; 403: an issuer's policy (the chart's
        # ValidatingAdmissionPolicy, reason Forbidden: e.g. a subject the issuer does not allow).
        policy = code == 403 and "ValidatingAdmissionPolicy" in message
        assert code in (400, 422) or policy, f"HTTP {code} {body[:300]!r}"
        assert message, f"rejected without a message: HTTP {code} {body[:300]!r}"
        counts["rejected"] = counts.get("rejected", 0) + 1
        kind = message.replace(f'"{name}" ', "")[:100]
        reasons[kind] = reasons.get(kind, 0) + 1

    probe()
    return next(seq)


def settle_and_check(cluster: LocalCluster, ns: str, counts: dict[str, int]) -> None:
    """Every accepted manifest ends Ready, Suspended or Stalled with a reason; no Secret for a
    token that stalled before issuing."""
    path = f"{GROUP_PATH}/namespaces/{ns}/agenttokens"

    def undecided() -> list[str]:
        return [o["metadata"]["name"] for o in get(cluster, path)["items"] if verdict(o) is None]

    try:
        wait_for(
            f"the accepted manifests in {ns} to settle", lambda: not undecided(), timeout=300, interval=2
        )
    except AssertionError as exc:
        details = [
            (n, (get(cluster, f"{path}/{n}").get("status") or {}).get("conditions")) for n in undecided()[:5]
        ]
        raise AssertionError(f"{exc}: {details}") from None
    secrets = get(cluster, f"/api/v1/namespaces/{ns}/secrets")["items"]
    owned_by = {ref["uid"] for s in secrets for ref in s["metadata"].get("ownerReferences") or []}
    for obj in get(cluster, path)["items"]:
        v = verdict(obj)
        assert v is not None
        counts[v] = counts.get(v, 0) + 1
        if v.startswith("Stalled:") and v.removeprefix("Stalled:") in PRE_ISSUE_STALLS:
            name = obj["metadata"]["name"]
            assert obj["metadata"]["uid"] not in owned_by, f"{name}: {v} yet a Secret was written"
            assert not (obj.get("status") or {}).get("tokenId"), f"{name}: {v} with a token"


def test_fuzzed_manifests_are_rejected_or_settle(
    kube: Kube, cluster: LocalCluster, operator: OperatorProcess, size: Size
) -> None:
    total, batch = size("fuzz_examples"), size("fuzz_batch")
    log_offset = len(operator.log_text())
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    t0 = time.monotonic()
    done = 0
    while done < total:
        ns = new_namespace(kube, "fuzz")
        fuzz_fixtures(kube, ns)
        done += post_batch(cluster, ns, min(batch, total - done), counts, reasons)
        settle_and_check(cluster, ns, counts)
        assert operator.alive()
    log = operator.log_text()[log_offset:]
    assert "Traceback" not in log, "the operator logged a traceback while handling fuzzed manifests"
    print(f"\nfuzz: {done} manifests in {time.monotonic() - t0:.0f}s: {dict(sorted(counts.items()))}")
    print("fuzz: most frequent rejections:", sorted(reasons.items(), key=lambda kv: -kv[1])[:5])

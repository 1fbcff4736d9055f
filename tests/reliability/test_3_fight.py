"""[measure] reliability 3: writers fighting over a managed Secret. The operator converges once
they stop and never hot-loops: its API writes (counted at the apiserver's audit log) stay within
a bound per foreign write, and drop to nothing for the Secret once the fight is over."""

from __future__ import annotations

import base64
import collections
import json
import threading
import time
from typing import Any

from devcluster import LocalCluster
from tests.e2e.kube import Kube, wait_for
from tests.e2e.operator import OperatorProcess

from .conftest import Size, now, operator_writes
from .support import condition, get, is_ready, jwks, new_namespace, secret_data, verified_claims

MERGE = "application/merge-patch+json"
NAME, SECRET = "contested", "contested-token"
# Each forged token costs the operator a new token: Secret write, status patch, Event. Metadata
# repairs cost less. Anything beyond a few writes per foreign write is a loop.
WRITES_PER_FOREIGN_WRITE = 4
QUIET_WINDOW_S = 20


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def agenttoken(name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "agenttoken.dev/v1alpha1",
            "kind": "AgentToken",
            "metadata": {"name": name},
            "spec": {"audience": ["https://api.example.com"], "ttl": "1h", "secret": {"name": SECRET}},
        }
    )


class Writer(threading.Thread):
    """Overwrites part of the Secret in a tight loop until stopped; counts accepted writes."""

    def __init__(self, cluster: LocalCluster, path: str, patch: Any, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.cluster, self.path, self.patch, self.stop = cluster, path, patch, stop
        self.writes = 0

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            code, _ = self.cluster.api("PATCH", self.path, self.patch(i), content_type=MERGE)
            if code == 200:
                self.writes += 1


def convergence_gaps(cluster: LocalCluster, ns: str) -> list[str]:
    """What still differs from a settled state (names fields, never values of the token)."""
    obj = get(cluster, f"/apis/agenttoken.dev/v1alpha1/namespaces/{ns}/agenttokens/{NAME}")
    secret = get(cluster, f"/api/v1/namespaces/{ns}/secrets/{SECRET}")
    meta, st = secret["metadata"], obj.get("status") or {}
    gaps = [] if is_ready(obj) else [f"Ready: {condition(obj, 'Ready')}"]
    try:
        claims = verified_claims(secret_data(secret)["token"], jwks(cluster))
        if claims["jti"] != st.get("tokenId"):
            gaps.append("the Secret's token is not the one in status")
    except Exception as exc:
        gaps.append(f"the Secret's token does not verify ({type(exc).__name__})")
    if meta.get("annotations", {}).get("agenttoken.dev/token-id") != st.get("tokenId"):
        gaps.append("token-id annotation")
    if meta.get("labels", {}).get("app.kubernetes.io/managed-by") != "agent-token-operator":
        gaps.append("managed-by label")
    return gaps


def tally(events: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(
        f"{e['verb']} {e['objectRef'].get('resource')}"
        + (f"/{e['objectRef']['subresource']}" if e["objectRef"].get("subresource") else "")
        for e in events
    )


def test_writers_fighting_over_a_secret_converge_without_a_hot_loop(
    kube: Kube, cluster: LocalCluster, operator: OperatorProcess, size: Size
) -> None:
    ns = new_namespace(kube, "fight")
    kube.apply(agenttoken(NAME), "-n", ns)
    kube.kubectl("wait", "--for=condition=Ready", f"agenttoken/{NAME}", "-n", ns, "--timeout=60s")
    # A second AgentToken naming the same Secret: it must stay out of the fight (SecretConflict).
    kube.apply(agenttoken("rival"), "-n", ns)
    wait_for(
        "the rival to stall on the conflict",
        lambda: (
            condition(
                get(cluster, f"/apis/agenttoken.dev/v1alpha1/namespaces/{ns}/agenttokens/rival"), "Stalled"
            ).get("reason")
            == "SecretConflict"
        ),
        timeout=60,
    )

    path = f"/api/v1/namespaces/{ns}/secrets/{SECRET}"
    stop = threading.Event()
    writers = [
        # Replaces the token with garbage: the operator must put a valid token back.
        Writer(cluster, path, lambda i: {"data": {"token": b64(f"forged-{i}")}}, stop),
        # Rewrites the operator's metadata and the other keys, and takes the managed-by label away.
        Writer(
            cluster,
            path,
            lambda i: {
                "metadata": {
                    "annotations": {"agenttoken.dev/token-id": f"forged-{i}"},
                    "labels": {"app.kubernetes.io/managed-by": "someone-else"},
                },
                "data": {"expires-at": b64("1970-01-01T00:00:00Z")},
            },
            stop,
        ),
    ]
    fight_start = now()
    for w in writers:
        w.start()
    time.sleep(size("fight_seconds"))  # the fight's duration, not a wait for a condition
    stop.set()
    for w in writers:
        w.join(timeout=30)
    fight_end = now()
    t_end = time.monotonic()
    foreign = sum(w.writes for w in writers)

    try:
        wait_for(
            "the operator to converge", lambda: not convergence_gaps(cluster, ns), timeout=60, interval=0.5
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; still off: {convergence_gaps(cluster, ns)}") from None
    converged_s = time.monotonic() - t_end
    fight = operator_writes(cluster, fight_start, ns, until=fight_end)

    # After convergence: a quiet window in which the operator leaves the Secret alone.
    quiet_start = now()
    time.sleep(QUIET_WINDOW_S)  # the observation window itself
    quiet = operator_writes(cluster, quiet_start, ns)
    print(
        f"\nfight: {foreign} foreign writes in {size('fight_seconds')}s, operator {len(fight)} writes "
        f"({dict(tally(fight))}), converged {converged_s:.1f}s after; quiet window {dict(tally(quiet))}"
    )
    assert foreign > 0
    assert len(fight) <= WRITES_PER_FOREIGN_WRITE * foreign + 10, "operator writes out of bounds"
    assert not [e for e in quiet if e["objectRef"].get("resource") == "secrets"], "Secret still written"
    assert len(quiet) <= 3, f"operator still writing after convergence: {dict(tally(quiet))}"
    rival = get(cluster, f"/apis/agenttoken.dev/v1alpha1/namespaces/{ns}/agenttokens/rival")
    assert condition(rival, "Stalled").get("reason") == "SecretConflict"
    owners = get(cluster, path)["metadata"].get("ownerReferences") or []
    assert [o["name"] for o in owners] == [NAME]
    assert operator.alive()


def test_tokens_racing_for_one_secret_name_never_share_it(
    kube: Kube, cluster: LocalCluster, operator: OperatorProcess
) -> None:
    """Pairs of AgentTokens created at the same moment naming one Secret: exactly one owns it,
    the other stalls on the conflict without a token of its own (no create-then-overwrite)."""
    ns = new_namespace(kube, "race")
    pairs = 10
    path = f"/apis/agenttoken.dev/v1alpha1/namespaces/{ns}/agenttokens"

    def post(name: str, secret: str) -> None:
        body = json.loads(agenttoken(name))
        body["spec"]["secret"]["name"] = secret
        code, text = cluster.api("POST", path, body)
        assert code == 201, text[:300]

    threads = [
        threading.Thread(target=post, args=(f"p{i}-{side}", f"race-{i}"))
        for i in range(pairs)
        for side in "ab"
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    def settled() -> list[dict[str, Any]] | None:
        items: list[dict[str, Any]] = get(cluster, path)["items"]
        done = [o for o in items if is_ready(o) or condition(o, "Stalled").get("status") == "True"]
        return items if len(done) == 2 * pairs else None

    items = {o["metadata"]["name"]: o for o in wait_for("every racer to settle", settled, timeout=120)}
    keys = jwks(cluster)
    for i in range(pairs):
        racers = [items[f"p{i}-a"], items[f"p{i}-b"]]
        winners = [o for o in racers if is_ready(o)]
        losers = [o for o in racers if not is_ready(o)]
        assert len(winners) == 1, f"pair {i}: {[condition(o, 'Ready') for o in racers]}"
        winner, loser = winners[0], losers[0]
        assert condition(loser, "Stalled").get("reason") == "SecretConflict"
        assert not (loser.get("status") or {}).get("tokenId"), f"pair {i}: the loser reports a token"
        secret = get(cluster, f"/api/v1/namespaces/{ns}/secrets/race-{i}")
        assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [winner["metadata"]["uid"]]
        assert verified_claims(secret_data(secret)["token"], keys)["jti"] == winner["status"]["tokenId"]

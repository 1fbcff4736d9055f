"""[measure] reliability 2: kube-apiserver stopped mid-run and started again. Renewals resume
within 30 s and no token expires; the operator survives."""

from __future__ import annotations

import datetime
import threading
import time

from agenttoken.core.times import parse_time
from devcluster import LocalCluster
from tests.e2e.kube import Kube, wait_for
from tests.e2e.operator import OperatorProcess

from .conftest import Size, now
from .support import (
    agenttokens,
    check_secret_holds_valid_token,
    is_ready,
    jwks,
    new_namespace,
    short_lived,
    wait_all,
)

RESUME_WITHIN_S = 30


class History:
    """(issuedAt, expiresAt) of every revision seen, polled once a second (gaps while the API is down)."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace
        self.seen: dict[str, dict[int, tuple[datetime.datetime, datetime.datetime]]] = {}
        self.stop = threading.Event()

    def poll(self) -> None:
        while not self.stop.is_set():
            try:
                items = agenttokens(self.cluster, self.namespace)
            except (OSError, AssertionError):
                items = []
            for obj in items:
                st = obj.get("status") or {}
                if st.get("revision") and st.get("issuedAt") and st.get("expiresAt"):
                    revs = self.seen.setdefault(obj["metadata"]["name"], {})
                    revs[int(st["revision"])] = (parse_time(st["issuedAt"]), parse_time(st["expiresAt"]))
            self.stop.wait(1)


def test_apiserver_outage_renewals_resume_and_nothing_expires(
    kube: Kube, cluster: LocalCluster, operator: OperatorProcess, size: Size
) -> None:
    count, outage = size("outage_tokens"), size("outage_seconds")
    ns = new_namespace(kube, "outage")
    for i in range(count):
        # Renew every ~12 s with 48 s left: renewals fall due while the apiserver is down.
        kube.apply(short_lived(f"o{i}", 80), "-n", ns)
    wait_all(cluster, [ns], "every first token", is_ready, timeout=120)
    history = History(cluster, ns)
    poller = threading.Thread(target=history.poll, daemon=True)
    poller.start()
    # Mid-run: wait until the fleet has renewed at least once.
    wait_all(cluster, [ns], "a first renewal of every token",
             lambda o: (o.get("status") or {}).get("revision", 0) >= 2, timeout=120)  # fmt: skip

    down_at = now()
    cluster.stop_apiserver(grace=1)  # a crash, not a graceful drain (that alone takes ~10 s)
    time.sleep(max(0.0, outage - (now() - down_at).total_seconds()))  # the outage itself
    cluster.start_apiserver()
    up_at = now()
    t_up = time.monotonic()
    print(f"\noutage: apiserver down {(up_at - down_at).total_seconds():.1f}s")

    def renewed_since(obj: dict[str, object], moment: datetime.datetime) -> bool:
        st = obj.get("status") or {}
        assert isinstance(st, dict)
        return bool(st.get("issuedAt")) and parse_time(str(st["issuedAt"])) >= moment

    # Every token whose renewal fell due during the outage gets a new token within the bound.
    def all_caught_up() -> bool:
        items = agenttokens(cluster, ns)
        return bool(items) and all(parse_time(o["status"]["renewalTime"]) >= up_at for o in items)

    wait_for("renewals to resume", lambda: any(renewed_since(o, up_at) for o in agenttokens(cluster, ns)),
             timeout=RESUME_WITHIN_S + 15, interval=0.5)  # fmt: skip
    first_renewal_s = time.monotonic() - t_up
    wait_for("every overdue renewal", all_caught_up, timeout=RESUME_WITHIN_S + 30, interval=0.5)
    caught_up_s = time.monotonic() - t_up
    print(
        f"outage: first renewal {first_renewal_s:.1f}s after the apiserver was back, all overdue {caught_up_s:.1f}s"
    )
    assert first_renewal_s <= RESUME_WITHIN_S, f"renewals resumed only after {first_renewal_s:.1f}s"
    assert caught_up_s <= RESUME_WITHIN_S, f"overdue renewals done only after {caught_up_s:.1f}s"

    # Let one more round pass, then check continuity: each token was replaced before it expired.
    wait_all(cluster, [ns], "another renewal after the outage",
             lambda o: renewed_since(o, up_at) and is_ready(o), timeout=90)  # fmt: skip
    history.stop.set()
    poller.join(timeout=10)
    for name, revs in history.seen.items():
        for rev, (_, expires) in revs.items():
            if rev + 1 in revs:
                issued_next = revs[rev + 1][0]
                assert issued_next < expires, (
                    f"{ns}/{name}: revision {rev} expired before {rev + 1} was issued"
                )
    keys = jwks(cluster)
    for obj in agenttokens(cluster, ns):
        check_secret_holds_valid_token(cluster, keys, obj)
    assert operator.alive()
    # The rest of the control plane recovers too (the controller-manager's informers back off
    # after the outage), so the tests after this one start from a working cluster.
    new_namespace(kube, "after-outage", timeout=240)

"""Rolling restarts and revocation, end to end: kwok pods really get replaced."""

from __future__ import annotations

import datetime
import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agenttoken.core import revocation
from agenttoken.core.times import format_time, parse_time

from .kube import Kube, wait_for
from .operator import OperatorProcess
from .test_lifecycle import secret_data, status, wait_ready

KEY_PREFIX = "agenttoken.dev/revision."


def workload(
    kind: str,
    name: str,
    secret: str | list[str],
    *,
    replicas: int = 3,
    labels: dict[str, str] | None = None,
    env: bool = False,
) -> str:
    secrets = [secret] if isinstance(secret, str) else secret
    pod: dict[str, Any] = {
        "metadata": {"labels": {"app": name}},
        "spec": {
            "containers": [
                {
                    "name": "agent",
                    "image": "example.invalid/agent:1",
                    "volumeMounts": [
                        {"name": f"t{i}", "mountPath": f"/var/run/t{i}"} for i in range(len(secrets))
                    ],
                }
            ],
            "volumes": [{"name": f"t{i}", "secret": {"secretName": s}} for i, s in enumerate(secrets)],
        },
    }
    if env:
        pod["spec"]["containers"][0]["env"] = [
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": secrets[0], "key": "token"}}}
        ]
    spec: dict[str, Any] = {"selector": {"matchLabels": {"app": name}}, "template": pod}
    if kind == "Deployment":
        spec |= {"replicas": replicas, "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}
    elif kind == "StatefulSet":
        spec |= {"replicas": replicas, "serviceName": name, "podManagementPolicy": "Parallel"}
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": name, "labels": labels or {}},
            "spec": spec,
        }
    )


def token_with_rollout(name: str, secret: str, rollout: dict[str, Any], ttl: str = "1h") -> str:
    return json.dumps(
        {
            "apiVersion": "agenttoken.dev/v1alpha1",
            "kind": "AgentToken",
            "metadata": {"name": name},
            "spec": {"audience": ["https://api"], "ttl": ttl, "secret": {"name": secret}, "rollout": rollout},
        }
    )


def rollout_of(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = status(kube, namespace, name).get("rollout") or {}
    return result


def wait_rolled(kube: Kube, namespace: str, name: str, timeout: float = 90) -> dict[str, Any]:
    """Until status.rollout is Complete for the token currently in status."""

    def probe() -> dict[str, Any] | None:
        st = status(kube, namespace, name)
        ro = st.get("rollout") or {}
        done = ro.get("state") == "Complete" and ro.get("tokenId") == st.get("tokenId") and ro.get("targets")
        return ro if done else None

    return wait_for(f"the rollout of {name} to complete", probe, timeout=timeout)


def replicasets(kube: Kube, namespace: str, deployment: str) -> list[dict[str, Any]]:
    items = (kube.get_json("rs", "-n", namespace, "-l", f"app={deployment}") or {}).get("items", [])
    return items


def revisions(kube: Kube, namespace: str, app: str) -> set[str]:
    items = (kube.get_json("controllerrevisions", "-n", namespace) or {}).get("items", [])
    return {i["metadata"]["name"] for i in items if i["metadata"].get("labels", {}).get("app") == app}


def pod_annotations(kube: Kube, namespace: str, app: str) -> list[dict[str, str]]:
    pods = (kube.get_json("pods", "-n", namespace, "-l", f"app={app}") or {}).get("items", [])
    return [p["metadata"].get("annotations", {}) for p in pods if not p["metadata"].get("deletionTimestamp")]


def rotate(kube: Kube, namespace: str, name: str, value: str) -> None:
    kube.kubectl(
        "annotate", "agenttoken", name, "-n", namespace, f"agenttoken.dev/rotate={value}", "--overwrite"
    )


def test_each_rotation_replaces_deployment_pods_exactly_once(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(workload("Deployment", "web", "web-token"), "-n", namespace)
    kube.apply(
        token_with_rollout("web", "web-token", {"targets": [{"kind": "Deployment", "name": "web"}]}),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "web")
    first = wait_rolled(kube, namespace, "web")
    assert len(replicasets(kube, namespace, "web")) == 2  # the original and one restart for the first token
    for n in range(1, 3):
        rotate(kube, namespace, "web", f"r{n}")
        ro = wait_for(
            "a rollout for the new token",
            lambda first=first: (
                (r := rollout_of(kube, namespace, "web")).get("tokenId") != first["tokenId"]
                and r.get("state") == "Complete"
                and r
            ),
            timeout=90,
        )
        first = ro
        assert len(replicasets(kube, namespace, "web")) == 2 + n, "exactly one new ReplicaSet per rotation"
        key = KEY_PREFIX + "web"
        kube.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=60s")
        annotations = wait_for(
            "old pods to be gone",
            lambda key=key, ro=ro: (
                (a := pod_annotations(kube, namespace, "web"))
                and len(a) == 3
                and all(x.get(key) == ro["tokenId"] for x in a)
                and a
            ),
            timeout=30,
        )
        assert len(annotations) == 3
        target = ro["targets"][0]
        assert (target["kind"], target["name"], target["state"]) == ("Deployment", "web", "Complete")
        assert target["completedAt"] >= target["startedAt"]


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_statefulsets_and_daemonsets_roll_too(
    kube: Kube, operator: OperatorProcess, namespace: str, kind: str
) -> None:
    app = kind.lower()
    kube.apply(workload(kind, app, f"{app}-token", replicas=2), "-n", namespace)
    kube.apply(
        token_with_rollout(app, f"{app}-token", {"targets": [{"kind": kind, "name": app}]}), "-n", namespace
    )
    before = wait_rolled(kube, namespace, app)
    seen = revisions(kube, namespace, app)
    rotate(kube, namespace, app, "r1")
    after = wait_for(
        "a completed rollout of the new token",
        lambda: (
            (r := rollout_of(kube, namespace, app)).get("tokenId") != before["tokenId"]
            and r.get("state") == "Complete"
            and r
        ),
        timeout=90,
    )
    assert len(revisions(kube, namespace, app) - seen) == 1, "one new controller revision per rotation"
    key = KEY_PREFIX + app
    wait_for(
        "every pod on the new token",
        lambda: (
            (a := pod_annotations(kube, namespace, app)) and all(x.get(key) == after["tokenId"] for x in a)
        ),
        timeout=60,
    )


def test_selectors_and_auto_discovery_stay_in_the_namespace(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    other = f"{namespace}-other"
    kube.kubectl("create", "namespace", other)
    kube.wait_default_sa(other)
    try:
        kube.apply(
            workload("Deployment", "labelled", "unrelated", replicas=1, labels={"agents": "yes"}),
            "-n",
            namespace,
        )
        kube.apply(workload("Deployment", "consumer", "shared-token", replicas=1, env=True), "-n", namespace)
        kube.apply(
            workload("Deployment", "labelled", "unrelated", replicas=1, labels={"agents": "yes"}), "-n", other
        )
        kube.apply(workload("Deployment", "consumer", "shared-token", replicas=1), "-n", other)
        kube.apply(
            token_with_rollout(
                "shared",
                "shared-token",
                {"targets": [{"selector": {"matchLabels": {"agents": "yes"}}}], "autoDiscover": True},
            ),
            "-n",
            namespace,
        )
        ro = wait_rolled(kube, namespace, "shared")
        assert sorted(t["name"] for t in ro["targets"]) == ["consumer", "labelled"]
        consumers = status(kube, namespace, "shared")["consumers"]
        assert consumers == [
            {
                "kind": "Deployment",
                "name": "consumer",
                "via": ["env", "volume"],
                "needsRestart": True,
                "restartedOnRenewal": True,  # it is a target (auto-discovered)
            }
        ]
        key = KEY_PREFIX + "shared"
        for name in ("labelled", "consumer"):
            dep = kube.get_json("deployment", name, "-n", other)
            assert dep is not None
            assert key not in (dep["spec"]["template"]["metadata"].get("annotations") or {})
            assert dep["metadata"]["generation"] == 1
    finally:
        kube.kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_two_tokens_rotating_together_restart_once(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(workload("Deployment", "duo", ["duo-a-token", "duo-b-token"], replicas=2), "-n", namespace)
    for suffix in ("a", "b"):
        kube.apply(
            token_with_rollout(
                f"duo-{suffix}", f"duo-{suffix}-token", {"targets": [{"kind": "Deployment", "name": "duo"}]}
            ),
            "-n",
            namespace,
        )
    before = {s: wait_rolled(kube, namespace, f"duo-{s}")["tokenId"] for s in ("a", "b")}
    kube.kubectl("rollout", "status", "deployment/duo", "-n", namespace, "--timeout=60s")
    count = len(replicasets(kube, namespace, "duo"))
    rotate(kube, namespace, "duo-a", "x")
    rotate(kube, namespace, "duo-b", "x")
    for s in ("a", "b"):
        wait_for(
            f"duo-{s} rolled to its new token",
            lambda s=s: (
                (r := rollout_of(kube, namespace, f"duo-{s}")).get("tokenId") != before[s]
                and r.get("state") == "Complete"
            ),
            timeout=90,
        )
    assert len(replicasets(kube, namespace, "duo")) == count + 1


def test_crash_after_secret_write_rolls_exactly_once(
    kube: Kube, operator: OperatorProcess, namespace: str, tmp_path: Path
) -> None:
    kube.apply(workload("Deployment", "crashy", "crashy-token", replicas=2), "-n", namespace)
    kube.apply(
        token_with_rollout("crashy", "crashy-token", {"targets": [{"kind": "Deployment", "name": "crashy"}]}),
        "-n",
        namespace,
    )
    before = wait_rolled(kube, namespace, "crashy")
    kube.kubectl("rollout", "status", "deployment/crashy", "-n", namespace, "--timeout=60s")
    count = len(replicasets(kube, namespace, "crashy"))
    generation = kube.get_json("deployment", "crashy", "-n", namespace)["metadata"]["generation"]  # type: ignore[index]

    # Nothing due: a restart patches no workload.
    operator.stop()
    operator.start()
    operator.wait_reconciled(kube)
    assert kube.get_json("deployment", "crashy", "-n", namespace)["metadata"]["generation"] == generation  # type: ignore[index]

    # Crash right after the Secret holds the new token, before status or any workload patch.
    marker = tmp_path / "crashed"
    operator.stop()
    crashing = OperatorProcess(
        kube,
        operator.log_path,
        extra_env={"AGENTTOKEN_TEST_CRASH": f"after-secret-write:{marker}"},
        kubeconfig=operator.kubeconfig,
        identity=operator.identity,  # the restarted operator takes the crashed one's Lease at once
    )
    crashing.start()
    try:
        rotate(kube, namespace, "crashy", "boom")
        wait_for("the test crash point", crashing.exited, timeout=30)
    finally:
        crashing.stop()
    assert marker.exists()
    data = secret_data(kube, namespace, "crashy-token")
    assert data is not None
    assert json.loads(data["token.json"])["tokenId"] != before["tokenId"]
    operator.start()
    after = wait_for(
        "the rollout after the crash",
        lambda: (
            (r := rollout_of(kube, namespace, "crashy")).get("tokenId") != before["tokenId"]
            and r.get("state") == "Complete"
            and r
        ),
        timeout=90,
    )
    assert after["tokenId"] == json.loads(data["token.json"])["tokenId"]
    assert len(replicasets(kube, namespace, "crashy")) == count + 1


def test_rollout_cap_holds_as_seen_from_the_api(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    count = 50
    fleet = [
        json.loads(workload("Deployment", f"fleet-{i}", "fleet-token", replicas=1, labels={"fleet": "yes"}))
        for i in range(count)
    ]
    kube.apply(json.dumps({"apiVersion": "v1", "kind": "List", "items": fleet}), "-n", namespace)
    kube.apply(
        token_with_rollout(
            "fleet", "fleet-token", {"targets": [{"selector": {"matchLabels": {"fleet": "yes"}}}]}
        ),
        "-n",
        namespace,
    )
    wait_rolled(kube, namespace, "fleet", timeout=180)
    peak = 0
    stop = threading.Event()

    def observe() -> None:
        nonlocal peak
        while not stop.is_set():
            deps = (kube.get_json("deployments", "-n", namespace, "-l", "fleet=yes") or {}).get("items", [])
            rolling = 0
            for d in deps:
                st = d.get("status", {})
                spec_replicas = d["spec"]["replicas"]
                if (
                    st.get("observedGeneration", 0) < d["metadata"]["generation"]
                    or st.get("updatedReplicas", 0) < spec_replicas
                    or st.get("replicas", 0) > st.get("updatedReplicas", 0)
                    or st.get("availableReplicas", 0) < spec_replicas
                ):
                    rolling += 1
            peak = max(peak, rolling)
            stop.wait(0.1)

    watcher = threading.Thread(target=observe, daemon=True)
    watcher.start()
    try:
        before = status(kube, namespace, "fleet")["tokenId"]
        rotate(kube, namespace, "fleet", "go")
        wait_for(
            "the fleet to roll to the new token",
            lambda: (
                (r := rollout_of(kube, namespace, "fleet")).get("tokenId") != before
                and r.get("state") == "Complete"
            ),
            timeout=240,
        )
    finally:
        stop.set()
        watcher.join(timeout=10)
    assert 1 <= peak <= 5, f"{peak} Deployments rolled at once (cap 5 per namespace)"


def test_previous_token_is_revoked_only_after_rollout_and_grace(
    kube: Kube, operator: OperatorProcess, namespace: str
) -> None:
    kube.apply(workload("Deployment", "rev", "rev-token", replicas=2), "-n", namespace)
    kube.apply(
        token_with_rollout(
            "rev", "rev-token", {"targets": [{"kind": "Deployment", "name": "rev"}], "revokeAfter": "5s"}
        ),
        "-n",
        namespace,
    )
    first = wait_rolled(kube, namespace, "rev")
    rotate(kube, namespace, "rev", "1")

    def revoked() -> dict[str, str]:
        """Token id -> when this test first saw it on the signed list (the list carries only ids
        and expiries; polled every 0.1 s, so this is at most that much after the write)."""
        for i in range(revocation.PARTS):
            cm = kube.get_json("configmap", f"agenttoken-revocations-{i}", "-n", "agenttoken-system")
            part = revocation.read_part(((cm or {}).get("data") or {}).get(f"revocations-{i}.jws", ""))
            for jti in part.revoked if part is not None else ():
                seen.setdefault(jti, format_time(datetime.datetime.now(datetime.UTC)) or "")
        return seen

    seen: dict[str, str] = {}

    done = wait_for(
        "the new token's rollout",
        lambda: (
            revoked() is not None  # start watching the list before the revocation can happen
            and (r := rollout_of(kube, namespace, "rev")).get("tokenId") != first["tokenId"]
            and r.get("state") == "Complete"
            and r
        ),
        timeout=90,
    )
    completed = max(filter(None, (parse_time(t["completedAt"]) for t in done["targets"])))
    revoked_at = wait_for(
        "the previous token on the revocation list",
        lambda: revoked().get(first["tokenId"]),
        timeout=30,
        interval=0.1,
    )
    # Only after every target completed plus the 5 s grace (timestamps have second precision).
    revoked_time = parse_time(revoked_at)
    assert revoked_time is not None
    assert revoked_time >= completed + datetime.timedelta(seconds=5)
    assert rollout_of(kube, namespace, "rev")["revokedTokenId"] == first["tokenId"]
    assert status(kube, namespace, "rev")["tokenId"] not in revoked()


def test_strategy_none_patches_no_workload(kube: Kube, operator: OperatorProcess, namespace: str) -> None:
    kube.apply(workload("Deployment", "reader", "reader-token", replicas=1, env=True), "-n", namespace)
    kube.apply(
        token_with_rollout(
            "reader",
            "reader-token",
            {"strategy": "None", "targets": [{"kind": "Deployment", "name": "reader"}]},
        ),
        "-n",
        namespace,
    )
    wait_ready(kube, namespace, "reader")
    rotate(kube, namespace, "reader", "1")
    wait_for("the rotation", lambda: status(kube, namespace, "reader").get("revision") == 2, timeout=30)
    wait_for("consumers in status", lambda: status(kube, namespace, "reader").get("consumers"), timeout=15)
    dep = kube.get_json("deployment", "reader", "-n", namespace)
    assert dep is not None
    assert dep["metadata"]["generation"] == 1
    assert status(kube, namespace, "reader")["consumers"][0]["needsRestart"] is True
    events = kube.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=reader")
    assert events is not None
    assert "ConsumerNeedsRestart" in {e["reason"] for e in events["items"]}

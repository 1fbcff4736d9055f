"""Restart reaction: Secret written -> pod-template patch, the operator beside Stakater Reloader.

    .venv/bin/python bench/restart.py [--rotations 10]

One 3-replica Deployment mounts the Secret of an AgentToken that targets it; the same Deployment
carries `reloader.stakater.com/auto: "true"`, and Reloader runs as a process against the same
cluster (`--namespaces` this namespace, its default env-vars strategy). Each rotation
(`agenttoken.dev/rotate`) writes a new token into the Secret; a watch on the Secret and one on
the Deployment record, on one clock, when the Secret changed, when our pod-template annotation
carried the new token id, and when Reloader's `STAKATER_*_SECRET` env var changed.

Two operator runs: the default `--restart-debounce 2` (it merges rotations of several
AgentTokens feeding one workload into one rollout) and `--restart-debounce 0`, which reacts
like Reloader does (on each Secret change, no merging). Reloader is looked for in
<cache>/bins/reloader-$RELOADER_VERSION/reloader (hack/versions.env); without it that side is
recorded as skipped. Writes bench/results/restart.json. Goal ([measure]): faster than Reloader.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from benchsupport import SecretWatcher, header, start_operator, stop, summary, wait_for, write
from devcluster import LocalCluster, cache_bins_dir, install, read_versions

NS = "restart"
KEY = "agenttoken.dev/revision.agent"
RELOADER_ENV = "STAKATER_AGENT_TOK_SECRET"

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "agent", "annotations": {"reloader.stakater.com/auto": "true"}},
    "spec": {
        "replicas": 3,
        "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {
            "metadata": {"labels": {"app": "agent"}},
            "spec": {
                "containers": [
                    {
                        "name": "a",
                        "image": "example.invalid/a:1",
                        "volumeMounts": [
                            {"name": "t", "mountPath": "/var/run/agent-token", "readOnly": True}
                        ],
                    }
                ],
                "volumes": [{"name": "t", "secret": {"secretName": "agent-tok"}}],
            },
        },
    },
}

TOKEN = {
    "apiVersion": "agenttoken.dev/v1alpha1",
    "kind": "AgentToken",
    "metadata": {"name": "agent"},
    "spec": {
        "audience": ["https://api.example.com"],
        "ttl": "1h",
        "secret": {"name": "agent-tok"},
        "rollout": {"strategy": "Restart", "targets": [{"kind": "Deployment", "name": "agent"}]},
    },
}


def reloader_binary() -> Path | None:
    version = read_versions().get("RELOADER_VERSION", "")
    path = cache_bins_dir() / f"reloader-{version}" / "reloader"
    return path if version and path.is_file() else None


def ours(dep: dict[str, Any]) -> str | None:
    return ((dep["spec"]["template"]["metadata"].get("annotations")) or {}).get(KEY)


def theirs(dep: dict[str, Any]) -> str | None:
    for c in dep["spec"]["template"]["spec"].get("containers", []):
        for e in c.get("env") or []:
            if e.get("name") == RELOADER_ENV:
                return str(e.get("value"))
    return None


def first_after(events: list[tuple[float, str, dict[str, Any]]], since: float, probe: Any) -> float | None:
    return next((t for t, _, obj in events if t >= since and probe(obj)), None)


def rotations(cluster: LocalCluster, count: int, with_reloader: bool) -> dict[str, Any]:
    """`count` rotations; per rotation the Secret change, our patch, and Reloader's patch."""
    secrets = SecretWatcher(cluster, NS, keep_events=True)
    deps = SecretWatcher(
        cluster, NS, selector="", keep_events=True, collection=f"/apis/apps/v1/namespaces/{NS}/deployments"
    )
    assert secrets.events is not None
    assert deps.events is not None
    ours_s: list[float] = []
    theirs_s: list[float] = []
    try:
        for i in range(count):
            _, raw = cluster.api("GET", f"/api/v1/namespaces/{NS}/secrets/agent-tok")
            old = json.loads(raw)["metadata"]["annotations"]["agenttoken.dev/token-id"]
            before = theirs(
                json.loads(cluster.api("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/agent")[1])
            )
            cluster.api(
                "PATCH",
                f"/apis/agenttoken.dev/v1alpha1/namespaces/{NS}/agenttokens/agent",
                {"metadata": {"annotations": {"agenttoken.dev/rotate": f"bench-{time.time_ns()}-{i}"}}},
                content_type="application/merge-patch+json",
            )
            written = wait_for(
                "secret written",
                lambda old=old: next(
                    (
                        (t, o["metadata"]["annotations"]["agenttoken.dev/token-id"])
                        for t, _, o in list(secrets.events)
                        if o["metadata"]["name"] == "agent-tok"
                        and o["metadata"]["annotations"].get("agenttoken.dev/token-id") != old
                    ),
                    None,
                ),
            )
            t_secret, new = written
            t_ours = wait_for(
                "our patch", lambda new=new: first_after(list(deps.events), 0, lambda d: ours(d) == new)
            )
            ours_s.append(t_ours - t_secret)
            if with_reloader:
                t_theirs = wait_for(
                    "reloader patch",
                    lambda before=before, since=t_secret - 1: first_after(
                        list(deps.events), since, lambda d: theirs(d) not in (None, before)
                    ),
                )
                theirs_s.append(t_theirs - t_secret)
            wait_for("rollout complete", lambda: rolled(cluster))
            secrets.events.clear()
            deps.events.clear()
    finally:
        secrets.stop.set()
        deps.stop.set()
    result: dict[str, Any] = {"operator_secret_to_patch": summary(ours_s)}
    if with_reloader:
        result["reloader_secret_to_patch"] = summary(theirs_s)
        result["operator_faster_p50"] = (
            result["operator_secret_to_patch"]["p50_s"] < result["reloader_secret_to_patch"]["p50_s"]
        )
    return result


def rolled(cluster: LocalCluster) -> bool | None:
    d = json.loads(cluster.api("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/agent")[1])
    st = d.get("status") or {}
    done = (
        st.get("observedGeneration", 0) >= d["metadata"]["generation"]
        and st.get("updatedReplicas") == 3
        and st.get("availableReplicas") == 3
        and st.get("replicas") == 3
    )
    return True if done else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rotations", type=int, default=10)
    args = parser.parse_args()
    reloader = reloader_binary()
    results = header("restart", rotations=args.rotations, reloader=str(reloader) if reloader else None)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.start()
        env = cluster.env()
        install(env, examples=False)
        cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
        cluster.api("POST", f"/apis/apps/v1/namespaces/{NS}/deployments", DEPLOYMENT)
        rel: subprocess.Popen[bytes] | None = None
        op = None
        try:
            if reloader:
                with (Path(tmp) / "reloader.log").open("wb") as log:
                    rel = subprocess.Popen(
                        [str(reloader), f"--namespaces={NS}", "--log-level=info"],
                        env={**env, "KUBERNETES_NAMESPACE": NS},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                results["reloader_version"] = read_versions()["RELOADER_VERSION"]
            else:
                results["reloader"] = "skipped: no binary in the cache (see hack/versions.env)"
            for debounce in ("2", "0"):
                op = start_operator(env, Path(tmp) / "operator.log", extra=("--restart-debounce", debounce))
                if debounce == "2":
                    cluster.api("POST", f"/apis/agenttoken.dev/v1alpha1/namespaces/{NS}/agenttokens", TOKEN)
                    wait_for("first token rolled", lambda: rolled(cluster) if ours_now(cluster) else None)
                    time.sleep(3)  # Reloader's informers have synced
                results[f"debounce_{debounce}s"] = rotations(cluster, args.rotations, rel is not None)
                stop(op)
                op = None
        except BaseException:
            dep = json.loads(cluster.api("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/agent")[1])
            print("deployment template:", json.dumps(dep["spec"]["template"]))
            for name in ("operator.log", "reloader.log"):
                path = Path(tmp) / name
                if path.exists():
                    print(f"{name} tail:\n" + "\n".join(path.read_text().splitlines()[-30:]))
            raise
        finally:
            if op is not None:
                stop(op)
            if rel is not None:
                stop(rel)
            cluster.stop()
    if rel is not None:
        results["goals"] = {
            "faster_than_reloader_with_debounce_0": results["debounce_0s"]["operator_faster_p50"],
            "faster_than_reloader_with_default_debounce": results["debounce_2s"]["operator_faster_p50"],
        }
    write("restart", results)
    return 0


def ours_now(cluster: LocalCluster) -> bool:
    d = json.loads(cluster.api("GET", f"/apis/apps/v1/namespaces/{NS}/deployments/agent")[1])
    return ours(d) is not None


if __name__ == "__main__":
    raise SystemExit(main())

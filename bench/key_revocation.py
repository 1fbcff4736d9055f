"""Emergency key revocation: time from `agenttoken keys revoke KID` to the last Secret holding a
token of the new key.

    .venv/bin/python bench/key_revocation.py [--count 1000]

A local control plane and the operator as a process; `--count` AgentTokens (no rollout targets)
in one namespace, all signed by one key. Then the command, and a LIST of the managed Secrets every
0.25 s (the resolution of the figures) until every Secret's `agenttoken.dev/key-id` annotation
names the new key. Recorded: how long the command took, when the key left the served JWKS, when the
first and the last Secret held a new-key token, the operator's CPU seconds, the machine's load
average. Writes bench/results/key_revocation.json. The e2e test (tests/e2e/test_key_revocation.py)
asserts the behaviour; this script only measures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchsupport import cpu_seconds, header, start_operator, stop, wait_for, write
from devcluster import LocalCluster, install

NS = "keyrevoke"
KEY_ID = "agenttoken.dev/key-id"
SELECTOR = "app.kubernetes.io%2Fmanaged-by%3Dagent-token-operator"


def token(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "agenttoken.dev/v1alpha1",
        "kind": "AgentToken",
        "metadata": {"name": f"kr-{i}", "namespace": NS},
        "spec": {"audience": ["https://api.example.com"], "ttl": "1h", "secret": {"name": f"kr-{i}-tok"}},
    }


def kids_of_secrets(cluster: LocalCluster) -> dict[str, int]:
    _, raw = cluster.api("GET", f"/api/v1/namespaces/{NS}/secrets?labelSelector={SELECTOR}", timeout=60)
    counts: dict[str, int] = {}
    for s in json.loads(raw)["items"]:
        kid = (s["metadata"].get("annotations") or {}).get(KEY_ID, "")
        counts[kid] = counts.get(kid, 0) + 1
    return counts


def served_kids(port: int) -> set[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/jwks.json", timeout=5) as resp:
        return {k["kid"] for k in json.loads(resp.read())["keys"]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    results = header("key_revocation", count=args.count, poll_interval_s=0.25, rollout_targets=0)
    with tempfile.TemporaryDirectory() as tmp:
        cluster = LocalCluster(Path(tmp) / "cluster")
        cluster.start()
        env = cluster.env()
        install(env, examples=False)
        cluster.api("POST", "/api/v1/namespaces", {"metadata": {"name": NS}})
        op = start_operator(env, Path(tmp) / "operator.log")
        try:
            for i in range(args.count):
                cluster.api("POST", f"/apis/agenttoken.dev/v1alpha1/namespaces/{NS}/agenttokens", token(i))
            old = wait_for(
                f"{args.count} Secrets of one key",
                lambda: next((k for k, n in kids_of_secrets(cluster).items() if n == args.count), None),
                timeout=900,
                interval=1.0,
            )
            cpu0 = cpu_seconds(op.pid)
            t0 = time.monotonic()
            cli = subprocess.run(
                [str(Path(sys.executable).parent / "agenttoken"), "keys", "revoke", old],
                env=env, capture_output=True, text=True, check=True, timeout=120,
            )  # fmt: skip
            results["command_s"] = round(time.monotonic() - t0, 3)
            unpublished = first = None
            while True:
                now = time.monotonic() - t0
                if unpublished is None and old not in served_kids(op.http_port):  # type: ignore[attr-defined]
                    unpublished = now
                counts = kids_of_secrets(cluster)
                renewed = sum(n for k, n in counts.items() if k != old)
                if first is None and renewed:
                    first = now
                if renewed == args.count and unpublished is not None:
                    last = time.monotonic() - t0
                    break
                if now > 1800:
                    raise RuntimeError(f"only {renewed} of {args.count} Secrets re-issued after 30 min")
                time.sleep(0.25)
            results.update(
                {
                    "command_output": cli.stdout.strip().replace(old, "<kid>"),
                    "key_left_jwks_s": round(unpublished, 3),
                    "first_secret_new_key_s": round(first or last, 3),
                    "last_secret_new_key_s": round(last, 3),
                    "secrets_per_s": round(args.count / last, 1),
                    "operator_cpu_s": round(cpu_seconds(op.pid) - cpu0, 2),
                }
            )
        finally:
            stop(op)
            cluster.stop()
    write("key_revocation", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

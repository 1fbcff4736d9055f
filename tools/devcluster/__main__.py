"""python -m devcluster up|down|status|bins|run|import-images [--dir DIR] [--real-node]

up             start a local control plane in DIR (default .devcluster); --real-node adds a real
               node (containerd + kubelet + kube-proxy; one per host), --sync-frequency sets
               kubelet's syncFrequency (default upstream's 1m0s)
down           stop it (a real node first: pods removed by kubelet, the host restored)
status         is it running
bins           build the binaries that are missing (hack/build-cluster-bins.sh)
run            `make run`: the operator against KUBECONFIG's cluster, else the local one
import-images  import <cache>/images/*.tar into the real node's containerd again (after
               hack/build-images rebuilt one)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .binaries import ClusterError, ensure_binaries
from .cluster import DEFAULT_DIR, LocalCluster
from .devrun import dev_run
from .node import DEFAULT_SYNC_FREQUENCY


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devcluster",
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(__doc__ or "").split("\n", 1)[1],
    )
    parser.add_argument("command", choices=["up", "down", "status", "bins", "run", "import-images"])
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="cluster directory (default .devcluster)"
    )
    parser.add_argument(
        "--real-node",
        action="store_true",
        default=_truthy(os.environ.get("REAL_NODE")),
        help="also start a real node (env REAL_NODE=1)",
    )
    parser.add_argument(
        "--sync-frequency",
        default=os.environ.get("SYNC_FREQUENCY") or DEFAULT_SYNC_FREQUENCY,
        help="kubelet syncFrequency with --real-node (env SYNC_FREQUENCY; default %(default)s)",
    )
    args = parser.parse_args(argv)
    cluster = LocalCluster(args.dir.resolve(), real_node=args.real_node, sync_frequency=args.sync_frequency)
    try:
        return _run(args.command, cluster)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(command: str, cluster: LocalCluster) -> int:
    if command == "run":
        return dev_run()
    if command == "bins":
        ensure_binaries(node=cluster.real_node)
        return 0
    if command == "status":
        if cluster.load():
            node = f"  real node: {cluster.node.describe()}" if cluster.node else ""
            print(f"running: {cluster.server}  KUBECONFIG={cluster.kubeconfig}{node}")
            return 0
        print(f"not running in {cluster.workdir}")
        return 1
    if command == "down":
        was = cluster.running_pids()
        cluster.stop()
        print(f"stopped {sorted(was)}" if was else f"nothing running in {cluster.workdir}")
        return 0
    if command == "import-images":
        if not cluster.load():
            raise ClusterError(f"no cluster with a real node running in {cluster.workdir}")
        print("\n".join(cluster.import_images()))
        return 0
    if cluster.load():
        print(f"already running: {cluster.server}\nexport KUBECONFIG={cluster.kubeconfig}")
        return 0
    cluster.start()
    print(f"cluster ready in {cluster.started_in:.1f}s: {cluster.server}")
    if cluster.real_node:
        print(f"timings: {json.dumps({k: round(v, 2) for k, v in cluster.timings.items()})}")
    print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

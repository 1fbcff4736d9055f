"""The real node's pod network: a CNI bridge that stays inside the machine, and our nftables table.

Pods get an address on a bridge of ours and routes to exactly two places: the Service range
(kube-proxy turns ClusterIPs into endpoints) and the node's own address (the apiserver and
kubelet). There is no default route and no masquerade, so a connection to anywhere else fails at
once with "network unreachable"; our nftables table also drops forwarded traffic that is not
pod-to-pod (IP forwarding is on while the node runs: the bridge plugin needs it) and keeps the
apiserver and kubelet ports closed to other machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .binaries import ClusterError
from .pki import SERVICE_CIDR

POD_CIDR = "10.88.0.0/24"
BRIDGE = "agenttoken0"
CNI_NETWORK = "agenttoken"
NFT_TABLE = "agenttoken_realnode"
# Tables others create for us: kube-proxy's (nftables mode) and the portmap plugin's.
FOREIGN_NFT_TABLES = (
    ("ip", "kube-proxy"),
    ("ip6", "kube-proxy"),
    ("ip", "cni_hostport"),
    ("ip6", "cni_hostport"),
)


def node_ip() -> str:
    """The host's own non-loopback IPv4 address (kubelet refuses a loopback node IP):
    AGENTTOKEN_NODE_IP, else the source address of the default route, else the first global one."""
    if os.environ.get("AGENTTOKEN_NODE_IP"):
        return os.environ["AGENTTOKEN_NODE_IP"]
    route = subprocess.run(["ip", "-4", "-o", "route", "get", "1.1.1.1"], capture_output=True, text=True)
    match = re.search(r"\bsrc (\d+\.\d+\.\d+\.\d+)", route.stdout)
    if match:
        return match.group(1)
    addrs = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True
    )
    match = re.search(r"\binet (\d+\.\d+\.\d+\.\d+)/", addrs.stdout)
    if match:
        return match.group(1)
    raise ClusterError("no non-loopback IPv4 address on this host: kubelet needs one as its node IP")


def check_pod_cidr_free() -> None:
    """Fail clearly if the pod range is already routed here (someone else's bridge or VPN)."""
    routes = subprocess.run(
        ["ip", "-4", "-o", "route", "show", "to", "match", POD_CIDR.split("/")[0]],
        capture_output=True,
        text=True,
    ).stdout
    for line in routes.splitlines():
        if not line.startswith("default") and f"dev {BRIDGE}" not in line:
            raise ClusterError(f"the pod range {POD_CIDR} is already routed on this host: {line}")


def cni_conflist(ipam_dir: Path, node_address: str) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                # Pod traffic never leaves the machine: no SNAT to the host's address.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(ipam_dir),
                    "ranges": [[{"subnet": POD_CIDR}]],
                    # No 0.0.0.0/0: only the Service range and the node's own address are routed.
                    "routes": [{"dst": SERVICE_CIDR}, {"dst": f"{node_address}/32"}],
                },
            },
            # hostPort support without iptables (nothing is installed for pods without hostPorts).
            {"type": "portmap", "backend": "nftables", "capabilities": {"portMappings": True}},
        ],
    }


def nft_ruleset(guarded_ports: list[int]) -> str:
    ports = ", ".join(str(p) for p in guarded_ports)
    return f"""
table inet {NFT_TABLE} {{
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    ip saddr {POD_CIDR} ip daddr {POD_CIDR} accept
    ip saddr {POD_CIDR} counter drop
    ip daddr {POD_CIDR} counter drop
  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname "lo" accept
    ip saddr {POD_CIDR} accept
    tcp dport {{ {ports} }} counter drop
  }}
}}
"""


def _nft(nft: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(nft), *args], input=stdin, capture_output=True, text=True, check=False)


def install_nft_table(nft: Path, guarded_ports: list[int]) -> None:
    delete_nft_tables(nft, ours_only=True)
    result = _nft(nft, "-f", "-", stdin=nft_ruleset(guarded_ports))
    if result.returncode:
        raise ClusterError(f"nft could not install table {NFT_TABLE}: {result.stderr.strip()}")


def delete_nft_tables(nft: Path, *, ours_only: bool = False) -> None:
    tables = [("inet", NFT_TABLE)] + ([] if ours_only else list(FOREIGN_NFT_TABLES))
    present = set(nft_tables(nft))
    for family, name in tables:
        if f"{family} {name}" in present:
            _nft(nft, "delete", "table", family, name)


def nft_tables(nft: Path | None = None) -> list[str]:
    binary = str(nft) if nft else shutil.which("nft")
    if not binary:
        return []
    out = subprocess.run([binary, "list", "tables"], capture_output=True, text=True, check=False).stdout
    return sorted(
        line.removeprefix("table ").strip() for line in out.splitlines() if line.startswith("table ")
    )


def links() -> list[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True, check=False).stdout
    with contextlib.suppress(ValueError):
        return sorted(link["ifname"] for link in json.loads(out or "[]"))
    return []


def delete_bridge() -> None:
    if BRIDGE in links():
        subprocess.run(["ip", "link", "delete", BRIDGE], capture_output=True, check=False)

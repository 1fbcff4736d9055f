"""Options shared by the command groups, and their environment defaults."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # What `add_subparsers()` returns; each command module's `register` adds its parsers to it.
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_OPERATOR_NAMESPACE = os.environ.get("AGENTTOKEN_OPERATOR_NAMESPACE", "agenttoken-system")
DEFAULT_ISSUER = os.environ.get(
    "AGENTTOKEN_ISSUER_URL", "https://agent-token-operator.agenttoken-system.svc/issuers/builtin"
)


def common(p: argparse.ArgumentParser, *, listing: bool = False, output: bool = True) -> None:
    p.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's)")
    if listing:
        p.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
        p.add_argument("-l", "--selector", help="label selector")
    if output:
        p.add_argument("-o", "--output", choices=["table", "json", "yaml"], default="table")
    p.add_argument("--operator-namespace", default=DEFAULT_OPERATOR_NAMESPACE)

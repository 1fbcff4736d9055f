"""The argparse tree: the top level here, each command group's options in its own module."""

from __future__ import annotations

import argparse

from agenttoken import __version__
from agenttoken.cli import audit, keys, rotate, run, status, tokens


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agenttoken", description="agent-token-operator")
    parser.add_argument("--version", action="version", version=f"agenttoken {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    # The order is the order of `agenttoken --help`.
    status.register(sub)  # status
    rotate.register(sub)  # rotate, revoke
    tokens.register(sub)  # inspect, verify, jwks
    keys.register(sub)  # keys list, keys revoke
    audit.register(sub)  # audit
    run.register(sub)  # run
    return parser

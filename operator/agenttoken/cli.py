"""The `agenttoken` command line: `run` starts the operator; more subcommands arrive with [sdk]."""

from __future__ import annotations

import argparse
import os
import sys

from agenttoken import __version__


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agenttoken", description="agent-token-operator")
    parser.add_argument("--version", action="version", version=f"agenttoken {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the operator against the configured cluster")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; globs allowed); default: all namespaces",
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch all namespaces (default)")
    run.add_argument(
        "--operator-namespace",
        default=os.environ.get("AGENTTOKEN_OPERATOR_NAMESPACE", "agenttoken-system"),
        help="namespace holding the signing keys and the published JWKS (env AGENTTOKEN_OPERATOR_NAMESPACE)",
    )
    run.add_argument(
        "--issuer-url",
        default=os.environ.get(
            "AGENTTOKEN_ISSUER_URL", "https://agent-token-operator.agenttoken-system.svc/issuers/builtin"
        ),
        help="`iss` of tokens from the built-in issuer (env AGENTTOKEN_ISSUER_URL)",
    )
    run.add_argument(
        "--key-algorithm",
        choices=["ES256", "RS256", "EdDSA"],
        default=os.environ.get("AGENTTOKEN_KEY_ALGORITHM", "ES256"),
        help="signing algorithm of the built-in issuer's keys (a change rotates the key with overlap)",
    )
    run.add_argument(
        "--liveness",
        default=os.environ.get("AGENTTOKEN_LIVENESS", "http://127.0.0.1:8081/healthz"),
        help="liveness endpoint URL served by the operator ('' to disable)",
    )
    run.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("AGENTTOKEN_METRICS_PORT", "8080")),
        help="port of the Prometheus /metrics endpoint (0 disables it)",
    )
    run.add_argument("--metrics-address", default=os.environ.get("AGENTTOKEN_METRICS_ADDRESS", "127.0.0.1"))
    run.add_argument(
        "--restart-debounce",
        type=float,
        default=float(os.environ.get("AGENTTOKEN_RESTART_DEBOUNCE", "2")),
        help="seconds to gather rotations hitting one workload into a single restart (default 2)",
    )
    run.add_argument(
        "--max-rollouts",
        type=int,
        default=int(os.environ.get("AGENTTOKEN_MAX_ROLLOUTS", "10")),
        help="rollouts the operator lets run at once, cluster-wide (default 10)",
    )
    run.add_argument(
        "--max-rollouts-per-namespace",
        type=int,
        default=int(os.environ.get("AGENTTOKEN_MAX_ROLLOUTS_PER_NAMESPACE", "5")),
        help="rollouts the operator lets run at once in one namespace (default 5)",
    )
    run.add_argument("--log-format", choices=["json", "plain"], default="json")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging (never logs token material)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "run":
        from agenttoken.runner import RunOptions, run_operator

        run_operator(
            RunOptions(
                namespaces=tuple(args.namespace),
                operator_namespace=args.operator_namespace,
                issuer_url=args.issuer_url,
                key_algorithm=args.key_algorithm,
                liveness=args.liveness or None,
                metrics_port=args.metrics_port,
                metrics_address=args.metrics_address,
                log_json=args.log_format == "json",
                restart_debounce=args.restart_debounce,
                max_rollouts=args.max_rollouts,
                max_rollouts_per_namespace=args.max_rollouts_per_namespace,
                verbose=args.verbose,
            )
        )
        return 0
    print(f"unknown command {args.command}", file=sys.stderr)
    return 2

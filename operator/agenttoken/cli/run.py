"""`agenttoken run`: the operator's entry point (Makefile, chart, Dockerfile).

Every option has an AGENTTOKEN_* environment default, so the chart can set them either way.
"""

from __future__ import annotations

import argparse
import os
import socket
from typing import TYPE_CHECKING

from agenttoken.cli.options import DEFAULT_ISSUER, DEFAULT_OPERATOR_NAMESPACE

if TYPE_CHECKING:
    from agenttoken.cli.options import Subparsers


def register(sub: Subparsers) -> None:
    run = sub.add_parser("run", help="run the operator against the configured cluster")
    _scope_and_identity(run)
    _serving(run)
    _tuning(run)
    _election(run)
    run.add_argument("--log-format", choices=["json", "plain"], default="json")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging (never logs token material)")
    run.set_defaults(func=cmd_run)


def _scope_and_identity(run: argparse.ArgumentParser) -> None:
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
        default=DEFAULT_OPERATOR_NAMESPACE,
        help="namespace holding the signing keys and the published JWKS (env AGENTTOKEN_OPERATOR_NAMESPACE)",
    )
    run.add_argument(
        "--issuer-url",
        default=DEFAULT_ISSUER,
        help="`iss` of tokens from the built-in issuer (env AGENTTOKEN_ISSUER_URL)",
    )
    run.add_argument(
        "--key-algorithm",
        choices=["ES256", "RS256", "EdDSA"],
        default=os.environ.get("AGENTTOKEN_KEY_ALGORITHM", "ES256"),
        help="signing algorithm of the built-in issuer's keys (a change rotates the key with overlap)",
    )


def _serving(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--liveness",
        default=os.environ.get("AGENTTOKEN_LIVENESS", "http://127.0.0.1:8081/healthz"),
        help="liveness endpoint URL served by kopf ('' to disable)",
    )
    run.add_argument(
        "--http-port",
        "--metrics-port",
        dest="http_port",
        type=int,
        default=int(os.environ.get("AGENTTOKEN_HTTP_PORT", "8080")),
        help="port serving /metrics, /healthz, the JWKS, discovery and the revocation list (0 disables it)",
    )
    run.add_argument(
        "--http-address",
        "--metrics-address",
        dest="http_address",
        default=os.environ.get("AGENTTOKEN_HTTP_ADDRESS", "127.0.0.1"),
        help="address to serve on (0.0.0.0 in a pod)",
    )


# Numeric tuning options: (option, type, environment variable, default, help).
_TUNING: tuple[tuple[str, type[int] | type[float], str, str, str], ...] = (
    ("--restart-debounce", float, "AGENTTOKEN_RESTART_DEBOUNCE", "2",
     "seconds to gather rotations hitting one workload into a single restart (default 2)"),
    ("--max-rollouts", int, "AGENTTOKEN_MAX_ROLLOUTS", "10",
     "rollouts the operator lets run at once, cluster-wide (default 10)"),
    ("--max-rollouts-per-namespace", int, "AGENTTOKEN_MAX_ROLLOUTS_PER_NAMESPACE", "5",
     "rollouts the operator lets run at once in one namespace (default 5)"),
    ("--usage-warmup", float, "AGENTTOKEN_USAGE_WARMUP", "0",
     "extra seconds after the workload cache is synced before the unused-token policy judges consumers (default 0)"),
    ("--workers", int, "AGENTTOKEN_WORKERS", "32",
     "AgentTokens reconciled at once (default 32; each waits on the apiserver most of the time)"),
)  # fmt: skip


def _tuning(run: argparse.ArgumentParser) -> None:
    for option, kind, variable, default, help_ in _TUNING:
        run.add_argument(option, type=kind, default=kind(os.environ.get(variable, default)), help=help_)


def default_identity() -> str:
    """The pod's name (downward API) in a cluster: stable for the pod's life, unique among
    replicas. Elsewhere hostname-pid: a restarted process is a new candidate and waits for its
    predecessor's Lease to expire (or pass --identity to keep one across restarts)."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


def _election(run: argparse.ArgumentParser) -> None:
    ha = run.add_argument_group("leader election and sharding (coordination.k8s.io Leases)")
    ha.add_argument(
        "--shards",
        type=int,
        default=int(os.environ.get("AGENTTOKEN_SHARDS", "1")),
        help="shard Leases; AgentTokens map to shards by a hash of their namespace (default 1)",
    )
    for option, variable, default, what in (
        ("--lease-duration", "AGENTTOKEN_LEASE_DURATION", "15", "how long others wait before taking a Lease"),
        ("--renew-deadline", "AGENTTOKEN_RENEW_DEADLINE", "10", "a holder that could not renew for this long stops"),
        ("--retry-period", "AGENTTOKEN_RETRY_PERIOD", "2", "between two election rounds"),
    ):  # fmt: skip
        ha.add_argument(
            option,
            type=float,
            default=float(os.environ.get(variable, default)),
            help=f"seconds {what} (default {default})",
        )
    ha.add_argument(
        "--identity",
        default=None,
        help="this replica's name on the Leases (default: env POD_NAME, else hostname-pid)",
    )
    ha.add_argument(
        "--no-leader-elect",
        dest="leader_elect",
        action="store_false",
        help="hold every shard without Leases (tests and development with one process only)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    """Synchronous: kopf starts and owns its event loop."""
    from agenttoken.core.lease import LeaseTimings
    from agenttoken.runtime.runner import RunOptions, run_operator

    timings = (args.lease_duration, args.renew_deadline, args.retry_period)
    try:
        LeaseTimings(*timings)
    except ValueError as exc:
        raise SystemExit(f"agenttoken run: {exc}") from None
    if args.shards < 1:
        raise SystemExit("agenttoken run: --shards must be at least 1")

    run_operator(
        RunOptions(
            namespaces=tuple(args.namespace),
            operator_namespace=args.operator_namespace,
            issuer_url=args.issuer_url,
            key_algorithm=args.key_algorithm,
            liveness=args.liveness or None,
            http_port=args.http_port,
            http_address=args.http_address,
            log_json=args.log_format == "json",
            verbose=args.verbose,
            restart_debounce=args.restart_debounce,
            max_rollouts=args.max_rollouts,
            max_rollouts_per_namespace=args.max_rollouts_per_namespace,
            usage_warmup=args.usage_warmup,
            workers=args.workers,
            leader_elect=args.leader_elect,
            shards=args.shards,
            identity=args.identity or default_identity(),
            lease_timings=timings,
        )
    )
    return 0

"""Starts kopf with our settings: `agenttoken run`."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import kopf


@dataclass(frozen=True)
class RunOptions:
    namespaces: tuple[str, ...] = ()
    operator_namespace: str = "agenttoken-system"
    issuer_url: str = "https://agent-token-operator.agenttoken-system.svc/issuers/builtin"
    key_algorithm: str = "ES256"
    liveness: str | None = "http://127.0.0.1:8081/healthz"
    http_port: int = 8080
    http_address: str = "127.0.0.1"
    log_json: bool = True
    verbose: bool = False
    restart_debounce: float = 2.0
    max_rollouts: int = 10
    max_rollouts_per_namespace: int = 5
    usage_warmup: float = 0.0  # extra seconds after the workload cache is synced
    workers: int = 32
    leader_elect: bool = True
    shards: int = 1
    identity: str = "agenttoken"
    lease_timings: tuple[float, float, float] = (15.0, 10.0, 2.0)  # duration, renew deadline, retry


def run_operator(options: RunOptions) -> None:
    kopf.configure(
        verbose=options.verbose,
        log_format=kopf.LogFormat.JSON if options.log_json else kopf.LogFormat.FULL,
    )
    if not options.verbose:
        # kopf logs every handled event at INFO: one line per object per change is noise at 10k objects.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # Importing registers the handlers with kopf's default registry.
    from agenttoken.runtime import handlers

    if not options.namespaces:
        handlers.watch_namespaces()

    kopf.run(
        standalone=True,
        clusterwide=not options.namespaces,
        namespaces=options.namespaces,
        liveness_endpoint=options.liveness,
        memo=kopf.Memo(options=options),
    )

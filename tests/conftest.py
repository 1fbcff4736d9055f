"""Shared pytest options: which cluster the e2e tier runs against, how the real node runs."""

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--cluster",
        choices=["local", "existing", "kind"],
        default="local",
        help="e2e cluster: local control plane built from upstream (default), the current KUBECONFIG, "
        "or kind via pytest-kind (needs a Docker engine)",
    )
    parser.addoption(
        "--reliability-size",
        choices=["ci", "full"],
        default=None,
        help="tests/reliability: the small fixed CI budget (default) or the full sizes for the report "
        "(env RELIABILITY_SIZE; each knob also has its own RELIABILITY_* env override)",
    )
    parser.addoption(
        "--kubelet-sync-frequency",
        default=None,
        help="tests/node: the real node's kubelet syncFrequency, e.g. 5s (env AGENTTOKEN_KUBELET_SYNC; "
        "default upstream's 1m0s, which delays Secret volume updates by 60-90 s)",
    )

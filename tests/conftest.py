"""Shared pytest options: which cluster the e2e tier runs against."""

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

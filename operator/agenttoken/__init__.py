"""agent-token-operator: least-privilege, short-lived tokens for agent workloads on Kubernetes."""

__version__ = "0.1.0"
__all__ = ["__version__"]

"""The pure core: what a token holds, when to renew, what the Secret and status must say.

No I/O here, by contract (pyproject.toml, import-linter): no kopf, no Kubernetes client, no
aiohttp, no prometheus_client, no HTTP client. Everything is a function of its inputs and an
injected clock, so it is unit-tested without a cluster.
"""

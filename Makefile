# agent-token-operator: one entry point for humans and CI.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The dev/test cluster runner (tools/devcluster) and the image builder (tools/images) are not part
# of the shipped package: they are found through PYTHONPATH (pytest: pyproject's pythonpath).
export PYTHONPATH := $(CURDIR)/tools$(if $(PYTHONPATH),:$(PYTHONPATH))
# `make cluster-up REAL_NODE=1`: also a real node (containerd + kubelet + kube-proxy; one per host).
# SYNC_FREQUENCY=5s: kubelet's syncFrequency for it (default upstream's 1m0s).
REAL_NODE ?=
SYNC_FREQUENCY ?=
export REAL_NODE SYNC_FREQUENCY

.PHONY: help venv run test check lint fmt typecheck unit e2e test-node test-reliability test-reliability-full cluster-bins cluster-up cluster-down import-images chart-crds bench bench-writes bench-node clean

help:
	@echo "make run           run the operator (starts a local control plane if no cluster is configured)"
	@echo "make test          everything: lint, types, unit tests, e2e tests on a real local control plane"
	@echo "make check         ruff + mypy + import contracts + unit tests (no cluster)"
	@echo "make test-reliability       kill -9, apiserver outage, Secret fights, fuzzing, leaks, tenancy (CI sizes)"
	@echo "make test-reliability-full  the same at full size (>= 500 renewals, 20 kills, 10,000 manifests)"
	@echo "make test-node     the real-node tier: pods with real containers (kubelet, containerd, kube-proxy)"
	@echo "make cluster-bins  build/cache etcd, kube-apiserver, controller-manager, scheduler, kwok, helm,"
	@echo "                   kubelet, kube-proxy, containerd, CNI plugins (+ Debian runc, nftables)"
	@echo "make cluster-up    start a local control plane; KUBECONFIG=.devcluster/kubeconfig"
	@echo "                   REAL_NODE=1: with a real node (SYNC_FREQUENCY=5s: kubelet syncFrequency)"
	@echo "make cluster-down  stop it (and the real node, restoring the host)"
	@echo "make import-images re-import <cache>/images/*.tar into the running real node"
	@echo "make bench         every benchmark -> bench/results/*.json and docs/performance.md"
	@echo "make bench-writes  burst vs the three-write ceiling, API writes per new token / renewal (audit log)"
	@echo "make bench-node    the real node's figures -> bench/results/node.json"

# The SDK (operator/sdk) first: the operator depends on agent-token-sdk, which must resolve to this
# checkout (pip then finds it installed and never asks PyPI for it).
$(VENV)/.installed: pyproject.toml operator/sdk/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e 'operator/sdk[metrics]'
	$(VENV)/bin/pip install -q -e '.[dev]'
	@# tools/ (devcluster, images: dev and test infrastructure, not shipped) importable from the venv too
	$(VENV)/bin/python -c 'import sysconfig; open(sysconfig.get_paths()["purelib"] + "/agenttoken-dev-tools.pth", "w").write("$(CURDIR)/tools\n")'
	touch $@

venv: $(VENV)/.installed

cluster-bins:
	bash hack/build-cluster-bins.sh

cluster-up: venv cluster-bins $(if $(filter 1 true yes,$(REAL_NODE)),images)
	$(PY) -m devcluster up

# OCI archives of pause, busybox, the operator, agent and demo API (tools/images), into <cache>/images.
images:
	$(PYTHON) hack/build-images

import-images: venv
	$(PY) -m devcluster import-images

cluster-down: venv
	$(PY) -m devcluster down

run: venv
	$(PY) -m devcluster run

lint: venv
	$(VENV)/bin/ruff check operator tests bench tools
	$(VENV)/bin/ruff format --check operator tests bench tools

fmt: venv
	$(VENV)/bin/ruff check --fix operator tests bench tools
	$(VENV)/bin/ruff format operator tests bench tools

typecheck: venv
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

unit: venv
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

check: lint typecheck unit

e2e: venv cluster-bins
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# tests/reliability: its own control plane; sizes via --reliability-size or RELIABILITY_* env.
test-reliability: venv cluster-bins
	$(PY) -m pytest tests/reliability $(PYTEST_ARGS)

test-reliability-full: venv cluster-bins
	$(PY) -m pytest tests/reliability --reliability-size=full -s $(PYTEST_ARGS)

# tests/node: a cluster with a real node (needs root, cgroups, /dev/net/tun; skips with the reason otherwise).
# kubelet syncs pods every 5 s here (SYNC_FREQUENCY overrides): tests/node/test_operator.py renews a
# 60 s token every 20 s, and pods that read the Secret volume see a new file only at their next sync.
test-node: venv cluster-bins images
	$(PY) -m pytest tests/node --kubelet-sync-frequency=$(or $(SYNC_FREQUENCY),5s) $(PYTEST_ARGS)

test: check e2e test-node test-reliability

chart-crds:
	$(PYTHON) hack/chart_crds.py

# Every benchmark, one after the other in one run (ratios between them hold on a noisy machine).
# BENCH_TOKENS sizes the steady-state run (the committed results are from the full 10000).
BENCH_TOKENS ?= 10000
bench: venv cluster-bins
	$(PY) bench/lifecycle.py --profile
	$(PY) bench/restart.py
	$(PY) bench/api_economy.py
	$(PY) bench/crypto.py
	$(PY) bench/steady.py --profile --tokens $(BENCH_TOKENS)
	$(PY) bench/image_builds.py
	$(PY) bench/report.py

# [perf] #17 alone: the burst against its three-write ceiling (with py-spy), writes per new token
# and per renewal from the audit log, then docs/performance.md. BENCH_STEADY=1 adds the 10k run.
bench-writes: venv cluster-bins
	$(PY) bench/lifecycle.py --profile
	$(PY) bench/api_economy.py
	$(if $(filter 1 true yes,$(BENCH_STEADY)),$(PY) bench/steady.py --profile --tokens $(BENCH_TOKENS))
	$(PY) bench/report.py

# The real node's figures (start, pod start, Secret propagation at two kubelet syncs, RSS): root,
# and it waits for the host's one real node if another run holds it.
bench-node: venv cluster-bins images
	$(PY) bench/node.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

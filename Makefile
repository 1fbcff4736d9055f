# agent-token-operator: one entry point for humans and CI.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help venv run test check lint fmt typecheck unit e2e test-reliability test-reliability-full cluster-bins cluster-up cluster-down chart-crds bench clean

help:
	@echo "make run           run the operator (starts a local control plane if no cluster is configured)"
	@echo "make test          everything: lint, types, unit tests, e2e tests on a real local control plane"
	@echo "make check         ruff + mypy + import contracts + unit tests (no cluster)"
	@echo "make test-reliability       kill -9, apiserver outage, Secret fights, fuzzing, leaks, tenancy (CI sizes)"
	@echo "make test-reliability-full  the same at full size (>= 500 renewals, 20 kills, 10,000 manifests)"
	@echo "make cluster-bins  build/cache etcd, kube-apiserver, controller-manager, scheduler, kwok, helm"
	@echo "make cluster-up    start a local control plane; KUBECONFIG=.devcluster/kubeconfig"
	@echo "make cluster-down  stop it"

# The SDK (operator/sdk) first: the operator depends on agent-token-sdk, which must resolve to this
# checkout (pip then finds it installed and never asks PyPI for it).
$(VENV)/.installed: pyproject.toml operator/sdk/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e 'operator/sdk[metrics]'
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

cluster-bins:
	bash hack/build-cluster-bins.sh

cluster-up: venv cluster-bins
	$(PY) -m agenttoken.devcluster up

cluster-down: venv
	$(PY) -m agenttoken.devcluster down

run: venv
	$(PY) -m agenttoken.devcluster run

lint: venv
	$(VENV)/bin/ruff check operator tests bench
	$(VENV)/bin/ruff format --check operator tests bench

fmt: venv
	$(VENV)/bin/ruff check --fix operator tests bench
	$(VENV)/bin/ruff format operator tests bench

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

test: check e2e test-reliability

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
	$(PY) bench/report.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

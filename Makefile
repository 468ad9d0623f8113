# The two commands a newcomer needs: `make demo` and `make test`.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
SYSTEM_DEPS := .local/.system-deps

.PHONY: help
help: ## Show the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall only when the dependencies change.
$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(SYSTEM_DEPS): hack/install-system-deps
	hack/install-system-deps
	mkdir -p .local && touch $@

.PHONY: deps
deps: $(INSTALLED) $(SYSTEM_DEPS) ## Install Python and Debian dependencies (idempotent)

.PHONY: control-plane
control-plane: ## Build (once, cached outside the repo) the control-plane binaries
	hack/build-control-plane >/dev/null

.PHONY: cert-manager
cert-manager: ## Build (once, cached outside the repo) cert-manager's controller and cainjector for the tests
	hack/build-cert-manager >/dev/null

NODE_DEPS := .local/.node-deps

$(NODE_DEPS): hack/install-node-deps
	hack/install-node-deps
	mkdir -p .local && touch $@

.PHONY: node-deps
node-deps: $(NODE_DEPS) ## Install the Debian packages of the image build and the real node (root)

.PHONY: image
image: deps node-deps ## Build SAMD's image without Docker: an OCI archive in .local/image (root)
	hack/build-image

.PHONY: node
node: ## Build (once, cached outside the repo) the real node's binaries
	hack/build-node >/dev/null

.PHONY: lint
lint: deps ## ruff
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

.PHONY: typecheck
typecheck: deps ## mypy --strict
	$(BIN)/mypy src/samd tests hack bench

.PHONY: unit
unit: deps ## Unit tests (no cluster)
	$(BIN)/pytest -m unit

.PHONY: integration
integration: deps control-plane cert-manager ## Integration tests against the real local control plane
	$(BIN)/pytest -m integration

.PHONY: real
real: deps control-plane node-deps node ## The real tier: pods on a real node, from SAMD's own image (root)
	$(BIN)/pytest -m real

# The real tier runs in a session of its own: it runs its own operator (see tests/real/conftest.py).
.PHONY: test
test: deps control-plane cert-manager node-deps node lint typecheck ## Everything CI runs: lint, types, unit, integration and real tests
	$(BIN)/pytest -m "unit or integration"
	$(BIN)/pytest -m real

.PHONY: e2e
e2e: deps ## e2e tier against the cluster named by KUBECONFIG (or the local control plane)
	$(BIN)/pytest -m e2e

.PHONY: bench
bench: deps control-plane ## Benchmarks; figures go to docs/benchmarks.md
	$(BIN)/python -m bench

# As root on a kernel that can run it, the demo joins the real node and runs
# `make node-deps node image` itself (cached after the first time); otherwise it says why and stays
# on the fake node. SAMD_DEMO_NODE=fake|real chooses.
.PHONY: demo demo-down
demo: deps control-plane ## The demo: the example model signed, encrypted, admitted and served (on a real node as root)
	hack/demo up
demo-down: ## Stop everything the demo started
	hack/demo down

.PHONY: cluster-up cluster-down cluster-status
cluster-up: control-plane ## Start the local control plane
	hack/local-cluster up
cluster-down: ## Stop the local control plane
	hack/local-cluster down
cluster-status: ## What of the local control plane runs
	hack/local-cluster status

.PHONY: clean
clean: ## Stop the cluster and remove local state (keeps the binary cache)
	-hack/local-cluster down
	rm -rf .local .pytest_cache .mypy_cache .ruff_cache

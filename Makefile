# ProjectorSet operator. `make demo` and `make test` install what they need themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: help venv lock lock-upgrade unit-lowest lint typecheck crds check-crds test unit run install uninstall demo bench bench-lag bench-scale profile-scale cluster-up cluster-down clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

# Installs come from uv.lock (exact versions and hashes). uv itself is pinned by hash in
# requirements-uv.txt and installed from PyPI into .uv/; it uses $(PYTHON), never a downloaded one.
UV_HOME := .uv
UV := $(UV_HOME)/bin/uv
export UV_PYTHON_DOWNLOADS := never

$(UV): requirements-uv.txt
	$(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/pip install --quiet --require-hashes --no-deps -r requirements-uv.txt
	touch $@

# --locked: a pyproject.toml changed without `make lock` stops here instead of resolving anew.
$(STAMP): pyproject.toml uv.lock $(UV)
	$(UV) sync --locked --all-extras --python $(PYTHON)
	touch $@

venv: $(STAMP) ## Create the virtualenv with the operator, every extra and the development tools, as uv.lock pins them

lock: $(UV) ## Update uv.lock after an edit of pyproject.toml's dependencies (keeps the locked versions it can)
	$(UV) lock --python $(PYTHON)

lock-upgrade: $(UV) ## Move every locked package to the newest version pyproject.toml allows
	$(UV) lock --upgrade --python $(PYTHON)

lint: $(STAMP) ## Ruff, mypy and the import contracts (layers) over the operator and the tests
	$(BIN)/ruff check operator tests
	$(BIN)/ruff format --check operator tests
	$(BIN)/mypy operator/projectorset
	$(BIN)/lint-imports

CHART_CRD := charts/projectorset-operator/templates/crd-projectorsets.yaml
crds: $(STAMP) ## Regenerate crds/ from the pydantic models, and the Helm chart's CRD template
	$(BIN)/python -m projectorset.api.crd > crds/projectorsets.yaml
	$(BIN)/python -m projectorset.api.crd --helm-template > $(CHART_CRD)

# This pytest with these arguments, where exit 5 (no test collected) fails: it means a broken suite.
pytest = @$(1) $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: the suite is broken" >&2; exit 1; fi; \
	exit $$rc

test: lint ## The whole suite: lint, type checks, unit, database, chart, test bed and cluster tests
	$(call pytest,$(BIN)/pytest)

UNIT_MARKERS := not cluster and not database and not chart and not testbed
unit: $(STAMP) ## The unit tests: no cluster, no PostgreSQL, no Go binaries (under a minute)
	$(call pytest,$(BIN)/pytest,-m '$(UNIT_MARKERS)')

# The floors in pyproject.toml are the major.minor of the locked versions; this checks them.
LOWEST := .venv-lowest
unit-lowest: $(UV) ## The unit tests on the lowest versions pyproject.toml allows (its floors), in .venv-lowest
	$(UV) venv --quiet --allow-existing --python $(PYTHON) $(LOWEST)
	$(UV) pip compile --quiet --no-header --all-extras --resolution lowest-direct --python $(LOWEST)/bin/python \
		-o $(LOWEST)/requirements.txt pyproject.toml
	$(UV) pip sync --quiet --python $(LOWEST)/bin/python $(LOWEST)/requirements.txt
	$(UV) pip install --quiet --python $(LOWEST)/bin/python --no-deps -e .
	$(call pytest,$(LOWEST)/bin/pytest,-m '$(UNIT_MARKERS)' -p no:cacheprovider)

SEED ?=
.PHONY: fuzz bench-isolation
fuzz: $(STAMP) ## The rollout's state machines at length, random, with issue 17's gated invariants (ROLLOUT_STRICT=1): prints its seed; SEED=n replays
	@seed='$(SEED)'; seed=$${seed:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	echo "make fuzz: seed $$seed (make fuzz SEED=$$seed replays this run)"; \
	ROLLOUT_STRICT=$${ROLLOUT_STRICT:-1} HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest tests/test_rollout_stateful.py -s -q --hypothesis-seed=$$seed

run: $(STAMP) ## Run the operator against the current kubeconfig
	$(BIN)/projectorset-operator

install: $(STAMP) ## Install the CRD into the current kubeconfig's cluster
	kubectl apply -f crds/

uninstall: ## Remove the CRD (and every ProjectorSet) from the current cluster
	kubectl delete -f crds/ --ignore-not-found

clean: ## Remove the virtualenv, the lock tool and caches in the work tree
	rm -rf $(VENV) $(UV_HOME) $(LOWEST) .pytest_cache .mypy_cache .ruff_cache

# The local Kubernetes cluster of tests/testbed (binaries built from Go modules, cached outside the tree).
# Each recipe below is one command, which bash execs: make passes a SIGTERM on to it, and the
# command stops all it started (testbed/stopping.py). A `cmd; other` recipe would leave it orphaned.
TESTBED := PYTHONPATH=tests:operator $(abspath $(BIN))/python
.PHONY: tools

tools: $(STAMP) ## Build etcd, the control plane, kubectl and helm from Go modules; prints their directory
	@$(TESTBED) -m testbed.toolchain

cluster-up: $(STAMP) ## Start the local cluster in the background; the last line is `export KUBECONFIG=...`
	@$(TESTBED) -m testbed.cluster up

cluster-down: ## Stop the local cluster, leaving no process or directory behind
	@$(TESTBED) -m testbed.cluster down

demo: $(STAMP) ## Local cluster + PostgreSQL + the operator: upgrade the sample application v1 -> v2 under writes
	@$(TESTBED) -m testbed.demo

EVENTS ?= 10000,100000
RUNS ?= 3
bench: $(STAMP) ## Measure upgrades (EVENTS=10000,100000 RUNS=3): totals, Jobs vs operator, switch latency, memory, API calls
	@$(TESTBED) -m testbed.bench --events $(EVENTS) --runs $(RUNS)

bench-isolation: $(STAMP) ## 10 ProjectorSets, 6 with a silent database: time for the others to switch
	@$(TESTBED) -m testbed.isolation

LAG_EVENTS ?= 10000000
bench-lag: $(STAMP) ## One replay-lag read on a store of LAG_EVENTS events (no xact_id index): p50/p95 vs a full count
	@$(TESTBED) -m testbed.bench_lag --events $(LAG_EVENTS)

N ?= 1000
QPS ?= 100
SETS ?= 300
profile-scale: $(STAMP) ## Where SETS starting ProjectorSets' time and memory go (SETS=300): CPU per component, API requests, memory by mapping
	@$(TESTBED) -m testbed.profile_scale --sets $(SETS) --controller-qps $(QPS)

bench-scale: $(STAMP) ## N ProjectorSets (default 1000) on one operator and PostgreSQL: all Active, at rest, one rollout (QPS=0: controllers at Kubernetes' default rate)
	@$(TESTBED) -m testbed.bench_scale --sets $(N) --controller-qps $(QPS)

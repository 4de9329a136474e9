# mbx: `make run` starts everything, `make test` runs the tests. `make help` lists the rest.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[1m%-10s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mbx needs Python 3.11 or newer; set PYTHON=python3.x")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

.PHONY: install
install: $(STAMP) ## Create .venv and install mbx with its dev tools

.PHONY: run
run: install ## Run the whole system on embedded NATS and PostgreSQL (Ctrl-C stops it)
	$(BIN)/mbx up

.PHONY: test
test: install browser ## Run the tests: the chaos tests beside the rest, each part with its own nats-server and PostgreSQL
	$(BIN)/python -m tests.run_split

.PHONY: browser
browser: ## Install Debian's Chromium for the dashboard's browser test, if it is missing (apt)
	@if command -v chromium >/dev/null; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
		echo "Chromium is missing and apt-get is not here: install chromium yourself for the browser test"; \
		if [ -n "$$CI" ]; then exit 1; fi; exit 0; fi; \
	SUDO=; if [ "$$(id -u)" != 0 ]; then SUDO=sudo; fi; \
	echo "installing Chromium (Debian package, about 20 s)"; \
	{ $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null; } || \
	{ echo "could not install Chromium: the browser test is skipped here (and fails in CI)"; [ -z "$$CI" ]; }

.PHONY: dashboard
dashboard: install ## Serve the dashboard for the running stack (mbx up starts one too)
	$(BIN)/mbx dashboard

.PHONY: lint
lint: install ## ruff, mypy --strict on contracts/, workers/ and dashboard/, and the import-boundary check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy contracts workers dashboard
	$(BIN)/lint-imports

.PHONY: fmt
fmt: install ## Format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

.PHONY: migrate
migrate: install ## Apply migrations to MBX_DATABASE_URL (or the running stack's database)
	$(BIN)/mbx migrate

.PHONY: schemas
schemas: install ## Regenerate contracts/schemas/ (JSON Schemas and AsyncAPI)
	$(BIN)/mbx schemas

.PHONY: bench
bench: install ## Benchmarks: routing, aggregator, pipeline, a burst at the brokers' rate limits, dashboard queries, parent orders with market impact, mbx whatif on 100,000 recorded intents, latency against raw JetStream (results in bench/results/; ~23 min)
	$(BIN)/python -m bench.route_bench
	$(BIN)/python -m bench.aggregator_bench
	$(BIN)/python -m bench.pipeline_bench
	$(BIN)/python -m bench.burst_bench
	$(BIN)/python -m bench.dashboard_bench
	$(BIN)/python -m bench.parents
	$(BIN)/python -m bench.whatif_bench
	$(BIN)/python -m bench.latency_bench

.PHONY: record-alpaca
record-alpaca: install ## Record fresh Alpaca payloads from a paper account (needs ALPACA_API_KEY/SECRET_KEY)
	$(BIN)/python -m tests.fakes.record_alpaca

.PHONY: clean
clean: ## Remove the virtualenv, caches and the embedded servers' data (.mbx/)
	rm -rf $(VENV) .mbx .pytest_cache .mypy_cache .ruff_cache .import_linter_cache

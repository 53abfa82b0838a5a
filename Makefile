# Real-time personalized pricing. `make help` lists the targets; CI calls `make test` and `make lint`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PRICING := $(BIN)/pricing
DATA ?= data/sim
PORT ?= 8000
# `make up`'s ports (README "Scheduled runs and the UIs"); up.sh refuses a busy one.
export SCORER_PORT ?= $(PORT)
export PREFECT_PORT ?= 4200
export MLFLOW_PORT ?= 5000
export PG_PORT ?= 5432

# Offline, quiet and local by default (README, "Running the pipeline", Configuration).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120
export PREFECT_HOME ?= $(CURDIR)/.prefect
export MPLCONFIGDIR ?= $(CURDIR)/.cache/matplotlib
export TOKENIZERS_PARALLELISM := false
export OMP_WAIT_POLICY := PASSIVE
export PYTHONUNBUFFERED := 1

.DEFAULT_GOAL := help
.PHONY: help install browser demo test test-fast test-slow lint format bench up up-postgres down serve ui-mlflow ui-prefect screenshots clean

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(BIN)/pricing: pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $@

install: $(BIN)/pricing ## Create .venv and install the project with its dev tools

# The `ui` tests render the UIs in a headless Chromium, found as infra/local/browser.py finds it
# ($PRICING_CHROMIUM, else chromium, google-chrome, ... on PATH). As root, Debian's `chromium` is
# installed when none is found (as .ci/run installs redis-server); otherwise one line says what to
# install, before any test runs.
HAS_BROWSER = $(BIN)/python -c 'import sys; sys.path.insert(0, "infra/local"); import browser; sys.exit(browser.chromium() is None)'

browser: install ## Make sure the `ui` tests have a headless Chromium (installs Debian's as root)
	@$(HAS_BROWSER) && exit 0; \
	if [ -z "$$PRICING_CHROMIUM" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the ui tests"; \
	  { DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || true; \
	fi; \
	$(HAS_BROWSER) || { echo "error: the ui tests need a headless Chromium: apt-get install -y chromium (make test does it as root), or set PRICING_CHROMIUM to a Chromium or Chrome binary" >&2; exit 1; }

demo: install ## Simulate a market, validate it, train, register, promote, then serve the champion
	$(PRICING) demo --data-dir $(DATA) --port $(PORT)

test: install browser ## Run the tests but those marked slow (unit, data, model, integration, ui); CI also runs test-slow
	$(BIN)/pytest -q -m "not slow"

test-fast: install ## Unit and data tests only
	$(BIN)/pytest -q -m "not slow and not integration"

test-slow: install ## Only the tests marked slow
	$(BIN)/pytest -q -m slow

lint: install ## ruff (lint + format check) and mypy on every package
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy pricing scorer lightning_modules mlops tasks flows expectations

format: install ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

BENCHMARKS := simulator_throughput validation_throughput optimizer_throughput train_throughput serving_steps scorer_load

bench: install ## Run the benchmarks (each prints JSON; README's Performance table comes from them)
	@for b in $(BENCHMARKS); do echo "== benchmarks/$$b.py"; $(BIN)/python benchmarks/$$b.py || exit 1; done

serve: install ## Serve the current champion on $(PORT)
	$(PRICING) serve --port $(PORT)

up: install ## Start Prefect server, worker, MLflow server and scorer in the background (sqlite stores)
	DATA=$(DATA) bash infra/local/up.sh

up-postgres: install ## The same stack with MLflow and Prefect on a local PostgreSQL (no root needed)
	BACKEND=postgres DATA=$(DATA) bash infra/local/up.sh

down: ## Stop what `make up` started: flow runs (marked Cancelled), worker, scorer, servers
	bash infra/local/down.sh

screenshots: install ## Throwaway stack on ports 8300/4500/5300: train, then Chromium PNGs of the UIs in docs/screenshots/
	SCORER_PORT=8300 PREFECT_PORT=4500 MLFLOW_PORT=5300 bash infra/local/screenshots.sh

# `make ui-mlflow`: one uvicorn worker (a UI for one person; MLflow's default is 4) and none of
# MLflow's GenAI job consumers; Ctrl-C stops it within a few seconds (open browser connections get
# UI_STOP_S to finish). The store is MLFLOW_TRACKING_URI's when set, as for `pricing`.
UI_WORKERS ?= 1
UI_STOP_S ?= 3
ui-mlflow: install ## The MLflow UI over the local store, in the foreground on $(MLFLOW_PORT)
	@echo "MLflow UI: http://127.0.0.1:$(MLFLOW_PORT)  (Ctrl-C stops it)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false exec $(BIN)/mlflow server --host 127.0.0.1 --port $(MLFLOW_PORT) \
	  --backend-store-uri "$${MLFLOW_TRACKING_URI:-sqlite:///mlruns/mlflow.db}" --artifacts-destination ./mlruns/artifacts \
	  --workers $(UI_WORKERS) --uvicorn-opts "--timeout-graceful-shutdown $(UI_STOP_S)"

ui-prefect: install ## The Prefect server and UI over the local store, in the foreground on $(PREFECT_PORT)
	@echo "Prefect UI: http://127.0.0.1:$(PREFECT_PORT)  (Ctrl-C stops it)"
	PREFECT_UI_API_URL=http://127.0.0.1:$(PREFECT_PORT)/api exec $(BIN)/prefect server start \
	  --host 127.0.0.1 --port $(PREFECT_PORT)

clean: ## Remove generated data, runs and caches (keeps .venv)
	rm -rf data runs .prefect .cache .pytest_cache mlruns/mlflow.db mlruns/[0-9]* mlruns/models \
	  mlruns/pg-artifacts .run/postgres .run/pg-password

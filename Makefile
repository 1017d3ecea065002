# One entry point for people, CI and the Docker image. `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
PROD_STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install install-prod demo serve migrate test test-fast lint fmt typecheck check bench soak clean

help: ## Show this help
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-12s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

$(PROD_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet .
	@touch $@

install: $(STAMP) ## Create .venv and install the service with its development tools

install-prod: $(PROD_STAMP) ## Install the service alone into .venv (what the Docker image runs)

demo: $(STAMP) ## Run the whole flow on SQLite + the Vipps simulator, nothing to configure
	$(BIN)/vipps-pos demo

serve: $(PROD_STAMP) ## Apply migrations and start the service (the Docker image's command)
	$(BIN)/vipps-pos serve

migrate: $(PROD_STAMP) ## Apply database migrations to head
	$(BIN)/vipps-pos migrate

test: $(STAMP) ## Run the test suite (needs Postgres on 127.0.0.1:5432, see README)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP) ## ruff check + ruff format --check
	$(BIN)/ruff check app tests alembic benchmarks
	$(BIN)/ruff format --check app tests alembic benchmarks

fmt: $(STAMP) ## Format and autofix
	$(BIN)/ruff format app tests alembic benchmarks
	$(BIN)/ruff check --fix app tests alembic benchmarks

typecheck: $(STAMP) ## mypy --strict on app/
	$(BIN)/mypy app

check: lint typecheck test ## Everything CI runs

bench: $(STAMP) ## Benchmarks against bare baselines (writes benchmarks/results/)
	$(BIN)/python -m benchmarks.run

soak: $(STAMP) ## The long reliability run (docs/RELIABILITY.md)
	VIPPS_POS_SOAK=1 $(BIN)/python -m pytest -q -m soak tests/reliability

clean: ## Remove the virtualenv and local state
	rm -rf $(VENV) var/*.db .pytest_cache .mypy_cache .ruff_cache

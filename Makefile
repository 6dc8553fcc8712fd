PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= $(CURDIR)/data/clickhouse

export CLICKHOUSE_URL ?= chdb://$(DATA_DIR)

.PHONY: install run test lint typecheck bench clean

install: $(STAMP)  ## create .venv and install the project with its dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: install  ## migrate the embedded ClickHouse and serve the API on 127.0.0.1:8080
	FINOPS_ENV=$${FINOPS_ENV:-development} $(BIN)/finops migrate
	FINOPS_ENV=$${FINOPS_ENV:-development} $(BIN)/finops serve

test: install lint  ## lint, type-check and run the whole suite
	$(BIN)/python -m pytest

lint: install  ## ruff and mypy (strict)
	$(BIN)/ruff check service workers tests benchmarks
	$(BIN)/ruff format --check service workers tests benchmarks
	$(BIN)/mypy

typecheck: install
	$(BIN)/mypy

bench: install  ## figures and ratios against baselines measured in the same run
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/queries.py
	$(BIN)/python benchmarks/budgets.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache

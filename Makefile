# Easel: `make dev` runs the whole stack locally; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install dev test lint typecheck bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: anything that pulls it in later would otherwise fetch a CUDA build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[api,worker,client,dev,test]'
	touch $(STAMP)

install: $(STAMP)

dev: install
	$(BIN)/easel dev

lint: install
	$(BIN)/ruff check api worker shared easel client bench tests
	$(BIN)/ruff format --check api worker shared easel client bench tests

typecheck: install
	$(BIN)/mypy

test: install lint typecheck
	$(BIN)/pytest

bench: install
	$(BIN)/python -m bench.tiny_models
	$(BIN)/python -m bench.sync_latency

clean:
	rm -rf $(VENV) .easel .pytest_cache .mypy_cache .ruff_cache

# Easel: `make dev` runs the whole stack locally; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install browser dev test faults lint typecheck bench soak clean

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned: anything that pulls it in later would otherwise fetch a CUDA build.
# The SDK is its own distribution (client/): the CLI's submit/status/cancel and the tests use it.
$(STAMP): $(BIN)/python pyproject.toml client/pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[api,worker,dev,test]' -e ./client
	touch $(STAMP)

install: $(STAMP)

# The playground's browser test drives Debian's Chromium: test tools may not download one.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ $(SUDO) apt-get update -qq && \
		  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

dev: install
	$(BIN)/easel dev

lint: install
	$(BIN)/ruff check api worker shared easel client bench tests
	$(BIN)/ruff format --check api worker shared easel client bench tests

typecheck: install
	$(BIN)/mypy

test: install browser lint typecheck
	$(BIN)/pytest

# Kill workers, restart Redis, stop S3 mid-run; prints lost/duplicated/failed counts.
faults: install
	$(BIN)/pytest tests/faults -s -p no:cacheprovider

bench: install
	$(BIN)/python -m bench

# Ten minutes of mixed load above the workers' capacity, loopback only; writes bench/soak.json.
soak: install
	$(BIN)/python -m bench.soak --seconds 600

clean:
	rm -rf $(VENV) .easel .pytest_cache .mypy_cache .ruff_cache

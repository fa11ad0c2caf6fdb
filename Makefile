# One entry point for everything: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test test-all test-local lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/leadlog up

test: setup
	$(BIN)/pytest -n 2 --dist loadfile

test-all: setup
	$(BIN)/pytest -n 2 --dist loadfile -m ''

# the integration tests against already-running servers (this machine's PostgreSQL and NATS)
test-local: setup
	LEADLOG_TEST_DATABASE_URL=$${LEADLOG_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test} \
	LEADLOG_TEST_NATS_URL=$${LEADLOG_TEST_NATS_URL:-nats://127.0.0.1:4222} \
	$(BIN)/pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# One entry point for everything: `make run`, `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser wrk run test test-all test-slow test-local lint bench lock clean

# Installs exactly the versions (and hashes) in requirements.lock; `make lock` refreshes it
# from the ranges in pyproject.toml.
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

# The browser tests drive Debian's Chromium (never a browser Playwright downloads).
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium; \
		else echo "chromium is missing and this is not root: the browser tests will be skipped (apt-get install chromium)"; fi; }

# The messaging bench posts provider callbacks with Debian's wrk (else slower httpx clients).
wrk:
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y wrk; \
		else echo "wrk is missing and this is not root: the callback bench will use httpx clients (apt-get install wrk)"; fi; }

run: setup
	$(BIN)/leadlog up

test: setup browser
	$(BIN)/pytest -n 2 --dist loadfile

test-all: setup browser
	$(BIN)/pytest -n 2 --dist loadfile -m ''

# only the tests marked slow (outages, soak, fuzzing at length)
test-slow: setup browser
	$(BIN)/pytest -n 2 --dist loadfile -m slow

# the integration tests against already-running servers (this machine's PostgreSQL and NATS)
test-local: setup browser
	LEADLOG_TEST_DATABASE_URL=$${LEADLOG_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/test} \
	LEADLOG_TEST_NATS_URL=$${LEADLOG_TEST_NATS_URL:-nats://127.0.0.1:4222} \
	$(BIN)/pytest -n 2 --dist loadfile

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: setup wrk
	$(BIN)/python -m bench

lock: setup
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --universal \
		--python-version 3.11 --no-header --quiet -o requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# Everything runs from .venv, created on first use from the committed lock file.
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && { echo $$p; break; }; done)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup run test bench lint typecheck lock clean

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: Python 3.11+ is needed (python3.11 or newer on PATH)"; exit 1; }
	@echo "==> creating $(VENV) with $(PYTHON) and installing the locked dependencies"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)
	@echo "==> ready: $(BIN)/analytics"

run: setup
	$(BIN)/analytics run

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq wrk >/dev/null); } || \
		{ echo "error: the ingest benchmark needs wrk: install it (apt-get install wrk) and run make bench again"; exit 1; }
	$(BIN)/python -m bench

lint: setup
	$(BIN)/python -m ruff check libs services tests

# Static types of libs/ and services/ ([tool.mypy] in pyproject.toml).
typecheck: setup
	$(BIN)/python -m mypy

# Re-resolve the pinned versions after changing dependencies in pyproject.toml.
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/pip install --quiet -e '.[test]' ruff
	.lockenv/bin/pip freeze --exclude-editable | grep -v '^-e' > requirements.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .data .pytest_cache

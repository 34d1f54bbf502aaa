# Everything runs from .venv, created on first use from the committed, hash-pinned lock files.
#
# The interpreter: the newest CPython 3.11-3.13 found, on PATH (python3.13, ...) or, when a pyenv
# shim there is not active, among pyenv's installed versions. Override: make setup PYTHON=/path/to/python3
PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3 \
	$$(ls -d "$$(pyenv root 2>/dev/null || echo "$$HOME/.pyenv")"/versions/3.*/bin/python3 2>/dev/null); do \
	v=$$($$p -c 'import sys; v = sys.version_info[:2]; sys.exit((3, 11) > v or v > (3, 13)); ' 2>/dev/null \
	  && $$p -c 'import sys; print("%d.%02d" % sys.version_info[:2])') && echo "$$v $$(command -v $$p)"; \
	done | sort -rV | head -n 1 | cut -d ' ' -f 2)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# One lock per dependency group of pyproject.toml, each layered on the one before:
#   requirements.lock           runtime: what the production image installs (deploy/Dockerfile)
#   requirements-embedded.lock  + the embedded engines (`analytics run` with no URLs set)
#   requirements-test.lock      + test, lint and type-check tools
LOCKS := requirements.lock requirements-embedded.lock requirements-test.lock

.PHONY: setup run test bench lint typecheck lock clean

# The OpenID provider the sign-in tests start (tests/oidc: the npm package oidc-provider, run with
# Node.js): installed from its package-lock.json when missing or when the lock changed.
OIDC_PROVIDER := tests/oidc/node_modules/.installed

setup: $(STAMP)

$(STAMP): $(LOCKS) pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: CPython 3.11, 3.12 or 3.13 is needed (python3.13 ... on PATH, or pyenv install 3.13)"; exit 1; }
	@echo "==> creating $(VENV) with $(PYTHON) ($$($(PYTHON) --version)) and installing the locked dependencies"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --progress-bar off --require-hashes $(addprefix -r ,$(LOCKS))
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)
	@echo "==> ready: $(BIN)/analytics"

run: setup
	$(BIN)/analytics run

# One process by default: on a 2-core machine two workers (each with its own embedded engines) load it
# enough that the timing checks (freshness within 2 s, cache hits) fail now and then. TEST_WORKERS=auto
# runs on every core with pytest-xdist (tests/conftest.py groups the tests). Measured on a 2-core machine:
# 2,294 tests took 17 min in one process (CI, 2026-12-03); 1,605 tests took 10 min with two workers, 14 in one.
TEST_WORKERS ?= 0
test: setup $(OIDC_PROVIDER)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

$(OIDC_PROVIDER): tests/oidc/package.json tests/oidc/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "warning: no npm (apt-get install nodejs npm): the OpenID sign-in tests will skip"; exit 0; }; \
	cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed

bench: setup
	@command -v wrk >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		(apt-get update -qq && apt-get install -y -qq wrk >/dev/null); } || \
		{ echo "error: the ingest benchmark needs wrk: install it (apt-get install wrk) and run make bench again"; exit 1; }
	$(BIN)/python -m bench

lint: setup
	$(BIN)/python -m ruff check libs services tests bench

# Configured in pyproject.toml ([tool.mypy]: libs/ and services/).
typecheck: setup
	$(BIN)/python -m mypy

# Re-resolve the locks after changing dependencies in pyproject.toml. One universal resolution for
# CPython 3.11-3.13 on every platform (environment markers where they differ), with the hashes of
# every wheel and sdist of each pinned version. The pins already in a lock are kept unless they must
# change, so a second run changes nothing; `make lock UPGRADE=1` moves everything to the newest.
UV_VERSION := 0.13.8
COMPILE := .lockenv/bin/uv pip compile --universal --python-version 3.11 --generate-hashes \
	--annotation-style line --custom-compile-command "make lock" --quiet $(if $(UPGRADE),--upgrade)
# `--no-emit-package` for each package pinned in the given locks: a layer lists only what it adds.
PINNED_IN = $$(sed -n 's/^\([A-Za-z0-9._-]*\)==.*/--no-emit-package \1/p' $(1) | sort -u)
lock:
	rm -rf .lockenv && $(PYTHON) -m venv .lockenv
	.lockenv/bin/python -m pip install --quiet uv==$(UV_VERSION)
	$(COMPILE) pyproject.toml -o requirements.lock
	$(COMPILE) pyproject.toml --extra embedded -c requirements.lock \
		$(call PINNED_IN,requirements.lock) -o requirements-embedded.lock
	$(COMPILE) pyproject.toml --extra embedded --extra test -c requirements.lock -c requirements-embedded.lock \
		$(call PINNED_IN,requirements.lock requirements-embedded.lock) -o requirements-test.lock
	rm -rf .lockenv

clean:
	rm -rf $(VENV) .data .pytest_cache tests/oidc/node_modules

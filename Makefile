# Task runner. Every target installs what it needs first, so on a fresh machine
# `make demo` and `make check` are the only two commands anyone has to know.
SHELL := /bin/bash
PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
RUN := $(UV) run --frozen

.PHONY: help install demo check lint types security audit test test-unit test-integration schemas sandbox bench faults poison clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "uv==$(UV_VERSION)"

# Byte-compiled once here: with PYTHONDONTWRITEBYTECODE set (as on the build machines) every
# process would otherwise compile celery, kombu, stripe and SQLAlchemy again as it starts.
$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --compile-bytecode
	@touch $@

install: $(VENV)/.synced ## create .venv with the locked dependencies

demo: install ## run the worker on embedded defaults (no services needed) and print each outcome
	$(RUN) debit-worker demo

check: lint types security test ## lint + types + bandit + the whole test suite (what CI runs)

lint: install ## ruff
	$(RUN) ruff check .
	$(RUN) ruff format --check .

types: install ## mypy --strict
	$(RUN) mypy

security: install ## bandit: medium and higher findings fail the build
	$(RUN) bandit -q -r worker schemas -ll

# pip-audit asks PyPI's per-version JSON API about every pinned version in uv.lock and fails
# on a known vulnerability, or (--strict) on a package it could not audit. It is not part of
# `check` because this build machine cannot reach a vulnerability database (PyPI's
# per-version JSON answers 404 here, the OSV service is unreachable): without one it would pass
# while auditing nothing. Run it where the network allows.
audit: install ## pip-audit --strict on the locked dependencies (needs a vulnerability database)
	$(UV) export --frozen --format requirements-txt --no-hashes --no-emit-project \
		| $(RUN) pip-audit -r /dev/stdin --no-deps --disable-pip --progress-spinner off --strict

test: install ## every test: unit and integration (needs RabbitMQ, PostgreSQL, Redis)
	$(RUN) pytest

test-unit: install ## unit tests only (no services)
	$(RUN) pytest tests/unit

test-integration: install ## integration tests only
	$(RUN) pytest tests/integration

schemas: install ## regenerate the committed JSON Schema files from the models
	$(RUN) python -m schemas.generate

sandbox: install ## run the local Stripe sandbox on 127.0.0.1:12111
	$(RUN) debit-worker sandbox

bench: install ## benchmark ours vs a naive worker; writes docs/performance.md (BENCH_ARGS=--quick)
	$(RUN) python -m bench $(BENCH_ARGS)

N ?= 5000
M ?= 10000
faults: install ## N debits under kills, crash points, broker/PostgreSQL restarts, Stripe faults; exits 1 on any violation
	$(RUN) python -m faults.harness --requests $(N) --broker-restarts 3 --postgres-restarts 3 --report faults-report.json

poison: install ## M malformed/adversarial messages: each DebitFailed or dead-lettered, zero Stripe calls
	$(RUN) python -m faults.poison --messages $(M)

clean: ## remove the virtualenvs and caches
	rm -rf $(VENV) $(TOOLS) .mypy_cache .ruff_cache .pytest_cache

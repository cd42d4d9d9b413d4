# VRAM Steward: the two commands are `make run` and `make test` (see README.md).
# Both work on a fresh Debian/Ubuntu machine as root or with sudo.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest system-deps venv bench clean daemon bundle audit

run: $(STAMP)
	$(PY) -m app

daemon: $(STAMP)
	$(PY) -m app daemon

test: system-deps $(STAMP) lint pytest

system-deps:
	@bash tools/install-system-deps.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { echo "error: could not create $(VENV); on Debian/Ubuntu install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check app tests bench
	$(VENV)/bin/ruff format --check app tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# Known vulnerabilities in the installed set (pip-audit; not part of `make test`: it needs the network).
# Exit 1 on a finding; exit 0 with a NOTICE when the advisory database cannot be reached.
audit: $(STAMP)
	$(PY) tools/audit.py $(AUDIT_ARGS)

bundle: $(STAMP)
	PYTHON=$(PY) bash packaging/build.sh

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache

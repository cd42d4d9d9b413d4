# VRAM Steward: the two commands are `make run` and `make test` (see README.md).
# Both work on a fresh Debian/Ubuntu machine as root or with sudo.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck pytest system-deps test-deps venv bench clean daemon bundle audit

run: $(STAMP)
	$(PY) -m app

daemon: $(STAMP)
	$(PY) -m app daemon

test: system-deps $(STAMP) lint test-deps pytest

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

# What the tests build once per machine, cached outside the checkout: llama.cpp's real llama-server
# (tools/build-llama-server.sh; 5 to 15 minutes the first time, at low priority). A failed build does not stop
# the other tests: the real-server tests then fail, naming the build log. VRAM_STEWARD_SKIP_REAL_SERVER=1
# skips the build, and those tests skip with a notice.
test-deps: $(STAMP)
	@if [ -n "$$VRAM_STEWARD_SKIP_REAL_SERVER" ]; then \
	  echo "NOTICE: VRAM_STEWARD_SKIP_REAL_SERVER is set: llama-server is not built; the real-server tests skip"; \
	else \
	  PYTHON=$(PY) nice -n 10 bash tools/build-llama-server.sh >/dev/null \
	    || echo "ERROR: building llama-server failed (above); the real-server tests will fail" >&2; \
	fi

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

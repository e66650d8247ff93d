# The two newcomer commands: `make run` and `make test`. Each builds the venv itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
# pytest workers for `make test` (pytest-xdist; a test file to one worker at a time, so a file's fixtures are
# shared as before). Most of the suite waits on engines and compiles in other processes, so two workers halve its
# time on 2 cores. TEST_WORKERS=0 runs it in this one process.
TEST_WORKERS ?= 2

.PHONY: run headless test lint bench clean-state venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel the machine offers, never the multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/esper-tui $(ARGS)

headless: $(STAMP)
	$(VENV)/bin/esper-tui --no-ui $(ARGS)

test: lint
	. scripts/ensure-redis.sh && . scripts/ensure-postgres.sh && . scripts/ensure-promtool.sh && . scripts/ensure-chromium.sh && . scripts/ensure-worker-access.sh && $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# Three checkers: ruff (lint + format), mypy --strict, and import-linter's contracts (pyproject.toml).
# mypy and import-linter read a symlink view of the package as it installs (scripts/lint-view.sh).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	scripts/lint-view.sh
	cd .lint && ../$(PY) -m mypy --config-file ../pyproject.toml --cache-dir ../.mypy_cache -p esper_tui
	cd .lint && PYTHONPATH=. ../$(VENV)/bin/lint-imports ../pyproject.toml

bench: $(STAMP)
	$(PY) -m benchmarks.forge $(ARGS)

clean-state:
	rm -rf var

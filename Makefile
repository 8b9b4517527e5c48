# Two commands matter on a fresh machine (Python 3.11+):
#   make run    start the CSMS (embedded default: in-process bus, in-memory stores)
#   make test   run the whole test suite (lint, types, unit, integration on private
#               Mosquitto + Redis started by the tests, end-to-end)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test unit lint types bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/csms run --unknown-tokens accept $(ARGS)

test: $(STAMP) lint types
	$(BIN)/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

unit: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

types: $(STAMP)
	$(BIN)/mypy
	$(BIN)/mypy tests

bench: $(STAMP)
	$(BIN)/python bench/roundtrip.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

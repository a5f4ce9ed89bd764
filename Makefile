# Development entry points. `make test` is what CI runs (.ci/run).

VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Only paths that exist: ruff reports a missing path as an error.
LINT_PATHS := $(wildcard fourstep_sqla tests benchmarks examples)

.PHONY: venv demo lint typecheck services test clean

venv: $(STAMP)

# Reinstall whenever pyproject.toml changes (dependencies, extras, entry points).
$(STAMP): pyproject.toml
	python3 -m venv $(VENV) && $(BIN)/pip install -q --upgrade pip && $(BIN)/pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/fourstep demo

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)

typecheck: $(STAMP)
	$(BIN)/mypy
	if [ -d tests/typing ]; then $(BIN)/mypy tests/typing; fi

services:
	./scripts/ensure-services

# Two workers for the bulk of the suite; then, alone, the tests marked serial
# (they time waits, or need no other transaction in the database). Plain
# `pytest` runs everything in one process.
test: lint typecheck services
	$(BIN)/pytest -q -n 2 -m "not serial"
	$(BIN)/pytest -q -m serial

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build dist *.egg-info

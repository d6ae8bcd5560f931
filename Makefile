# loopd's entry points. `make demo` and `make test` are the README's two commands; both
# work on a fresh CPU machine (pip takes the local CPU torch wheel through the exact pin).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench

$(BIN)/loopd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/loopd

demo: install
	$(BIN)/loopd demo --report state/demo-report.json

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

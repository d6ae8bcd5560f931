# loopd's entry points. `make demo` and `make test` are the README's two commands; both
# work on a fresh CPU machine (pip takes the local CPU torch wheel through the exact pin).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install vllm services demo test lint

$(BIN)/loopd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/loopd

demo: install
	$(BIN)/loopd demo --report state/demo-report.json

# vLLM (CPU build) in a venv of its own: it pins an older transformers than loopd's.
vllm:
	.ci/install-vllm.sh

# Services the tests run for real: a Prometheus server scrapes the daemon's /metrics.
services:
	@command -v prometheus >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

test: install vllm services
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

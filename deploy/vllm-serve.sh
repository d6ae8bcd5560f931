#!/usr/bin/env bash
# Start vLLM on a GPU host for loopd (OpenAI-compatible API + runtime LoRA).
# Usage: set -a; . deploy/vllm.env; set +a; deploy/vllm-serve.sh [extra vllm args]
#
# Adapter folders: loopd sends vLLM the *path* of each adapter version, so the adapter
# directory under loopd's state_dir must be visible to vLLM at the same path (same host,
# or the same bind mount in both containers).
set -euo pipefail
: "${VLLM_ALLOW_RUNTIME_LORA_UPDATING:?source deploy/vllm.env first}"
args=(
  "$VLLM_MODEL"
  --served-model-name "$VLLM_SERVED_NAME"
  --host "$VLLM_HOST" --port "$VLLM_PORT"
  --enable-lora
  --max-lora-rank "$VLLM_MAX_LORA_RANK"
  --max-loras "$VLLM_MAX_LORAS"
  --max-cpu-loras "$VLLM_MAX_CPU_LORAS"
  --max-model-len "$VLLM_MAX_MODEL_LEN"
  --gpu-memory-utilization "$VLLM_GPU_MEMORY_UTILIZATION"
  --tensor-parallel-size "$VLLM_TENSOR_PARALLEL_SIZE"
  --disable-uvicorn-access-log
)
if [[ -n "${VLLM_API_KEY:-}" ]]; then
  args+=(--api-key "$VLLM_API_KEY")
fi
exec vllm serve "${args[@]}" "$@"

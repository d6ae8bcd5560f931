"""How much memory a DPO round needs, and the micro-batch that fits a budget.

A round on a real model can need far more memory than the machine has: on SmolLM2-135M,
8 pairs of 768 tokens per step went past 19 GB and the kernel's OOM killer ended the
trainer (and, on a shared host, could as well have ended the serving engine). The cure is
TRL's own gradient accumulation: the same optimizer step over smaller micro-batches.
This module picks the largest micro-batch whose *estimated* peak fits the budget:

    peak ≈ weights + micro_batch × 2 sequences × length × layers × per_token_layer(length)

``per_token_layer`` counts the activations one decoder layer keeps for the backward pass
per token, in floats: ~16·hidden (norms, residuals, projections, rotary copies) +
5·intermediate (gate, up, activation, product, down input) + heads·length (the attention
probabilities: quadratic in the length, which is why long loops are expensive). TRL's
fused LM head scores tokens in tiles, so the vocabulary's logits never appear whole.
Weights count twice (the loaded tensors and the file pages read to make them).

Measured on SmolLM2-135M at ~590 tokens (``bench/train_memory.py``): 3.8, 6.4 and 11.2 GB
peak at micro-batches 1, 2 and 4, i.e. ~2.5 GB per pair over ~1.3 GB fixed; the estimate
says 2.9 per pair over 1.5, a little above, as a plan should be. Those peaks hold only
because the trainer runs with ``MALLOC_MMAP_THRESHOLD_`` fixed (``loopd.train``): by
default glibc keeps freed activation buffers in its heap and the same steps peaked at
8.9 and 14.3 GB. The trainer also enforces the budget (a clean "out of memory" instead of
the OOM killer), so an estimate that is wrong costs a retry at half the micro-batch, not
the machine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
DEFAULT_BUDGET_SHARE = 0.6  # of available memory, when training.memory_budget_gb is unset
FIXED_OVERHEAD = GIB // 2  # interpreter, torch, tokenizer, datasets
HIDDEN_FLOATS, INTERMEDIATE_FLOATS = 16, 5


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a model's ``config.json``."""

    parameters: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    vocab: int

    @classmethod
    def from_folder(cls, folder: Path) -> ModelShape:
        config = json.loads((folder / "config.json").read_text())
        config = config.get("text_config", config)
        hidden, layers = config["hidden_size"], config["num_hidden_layers"]
        intermediate = config.get("intermediate_size", 4 * hidden)
        vocab = config["vocab_size"]
        heads = config["num_attention_heads"]
        kv_heads = config.get("num_key_value_heads", heads)
        head_dim = config.get("head_dim", hidden // heads)
        per_layer = hidden * head_dim * (heads + 2 * kv_heads) + heads * head_dim * hidden
        per_layer += 3 * hidden * intermediate
        tied = config.get("tie_word_embeddings", True)
        parameters = layers * per_layer + vocab * hidden * (1 if tied else 2)
        return cls(parameters, hidden, intermediate, layers, heads, vocab)


@dataclass(frozen=True)
class BatchPlan:
    """Micro-batches of ``micro_batch`` pairs, ``accumulation`` of them per step."""

    micro_batch: int
    accumulation: int
    estimate_bytes: int
    budget_bytes: int
    seq_len: int

    def describe(self) -> str:
        return f"micro-batch {self.micro_batch} × {self.seq_len} tokens"


def estimate_peak_bytes(
    shape: ModelShape, *, micro_batch: int, seq_len: int, models_in_memory: int = 1
) -> int:
    """Estimated peak of one training step; see the module docstring for the terms."""
    per_token_layer = (
        HIDDEN_FLOATS * shape.hidden + INTERMEDIATE_FLOATS * shape.intermediate
    ) + shape.heads * seq_len
    activations = micro_batch * 2 * seq_len * shape.layers * per_token_layer * 4
    weights = 2 * shape.parameters * 4 * models_in_memory
    return int(FIXED_OVERHEAD + weights + activations)


def plan_batches(
    shape: ModelShape,
    *,
    batch_size: int,
    seq_len: int,
    budget_bytes: int,
    fixed_micro_batch: int | None = None,
    cap: int | None = None,
    models_in_memory: int = 1,
) -> BatchPlan:
    """The largest micro-batch that divides ``batch_size``, fits, and is ≤ ``cap``.

    ``fixed_micro_batch`` (the config's ``micro_batch_size``) wins over the estimate but
    not over ``cap``: a size that already ran out of memory is not tried again. When not
    even one pair fits the estimate, the plan is one pair anyway: the trainer's enforced
    budget then decides, and the failure names the setting to change.
    """
    limit = min(batch_size, cap or batch_size)
    candidates = [m for m in range(limit, 0, -1) if batch_size % m == 0]
    if fixed_micro_batch is not None:
        candidates = [m for m in candidates if m <= fixed_micro_batch] or [1]
    for micro in candidates:
        estimate = estimate_peak_bytes(
            shape, micro_batch=micro, seq_len=seq_len, models_in_memory=models_in_memory
        )
        if fixed_micro_batch is not None or estimate <= budget_bytes:
            break
    return BatchPlan(micro, math.ceil(batch_size / micro), estimate, budget_bytes, seq_len)


def available_bytes() -> int:
    """Memory the OS could give now without swapping (``MemAvailable``), host side."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo; set training.memory_budget_gb")


def budget_bytes(configured_gb: float | None, available: int) -> int:
    if configured_gb is not None:
        return int(configured_gb * GIB)
    return int(DEFAULT_BUDGET_SHARE * available)

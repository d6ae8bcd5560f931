"""What the loop runs on: the base model and the prompt sets, resolved once from config.

Either the config names a real model and its prompt files, or all three are unset and the
embedded default (built on first use) supplies them; config validation allows only the
two. The held-out set is checked here, before anything runs: it must share no prompt
with training, and it must be large enough for the gate to ever reach significance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loopd.config import LoopdConfig
from loopd.embedded import HELDOUT_FILE, MODEL_DIRNAME, TRAIN_FILE, EmbeddedSpec, ensure_embedded
from loopd.gate import heldout_too_small
from loopd.prompts import read_prompts
from loopd.types import Prompt


@dataclass(frozen=True)
class Inputs:
    """Where the base model and prompts are, once the embedded default is resolved."""

    base_model: Path
    train_prompts: list[Prompt]
    heldout: list[Prompt]


def resolve_inputs(
    cfg: LoopdConfig, progress: Callable[[int, int, float], None] | None = None
) -> Inputs:
    """The model and prompt files the config names, or the whole embedded default.

    Config validation allows only the two (a real model with the embedded prompts would
    run and measure nothing); the embedded default is built here on first use.
    """
    if cfg.model.base is None:
        spec = EmbeddedSpec(seed=cfg.model.embedded_seed)
        embedded = ensure_embedded(cfg.embedded_dir, spec, progress)
        base, train_files = embedded / MODEL_DIRNAME, [embedded / TRAIN_FILE]
        heldout_file = embedded / HELDOUT_FILE
    else:
        base, train_files, heldout_file = cfg.model.base, cfg.sampling.prompts, cfg.gate.heldout
    train = [p for path in train_files for p in read_prompts(path)]
    heldout = read_prompts(heldout_file)
    active = min(len(heldout), cfg.gate.heldout_size or len(heldout))
    too_small = heldout_too_small(active, cfg.gate.significance)
    if too_small:
        raise ValueError(f"gate.heldout ({heldout_file}): {too_small}")
    overlap = {p.id for p in train} & {p.id for p in heldout}
    if overlap:
        raise ValueError(
            f"{len(overlap)} held-out prompt ids are also training prompts (e.g. "
            f"{sorted(overlap)[0]!r}); the gate must measure prompts never trained on"
        )
    return Inputs(base_model=base, train_prompts=train, heldout=heldout)

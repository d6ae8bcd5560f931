"""What the loop runs on: the base model and the prompt sets, resolved once from config.

Either the config names a real model and its prompt files, or all three are unset and the
embedded default (built on first use) supplies them; config validation allows only the
two. The held-out set is checked here, before anything runs: it must share no prompt
with training, and it must be large enough for the gate to ever reach significance.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
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
    cfg.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # prompts, answers, weights
    if cfg.model.base is None:
        spec = EmbeddedSpec(seed=cfg.model.embedded_seed)
        embedded = ensure_embedded(cfg.embedded_dir, spec, progress)
        base, train_files = embedded / MODEL_DIRNAME, [embedded / TRAIN_FILE]
        heldout_file = embedded / HELDOUT_FILE
    else:
        base, train_files, heldout_file = cfg.model.base, cfg.sampling.prompts, cfg.gate.heldout
    files = [(path, read_prompts(path)) for path in [*train_files, heldout_file]]
    refuse_reused_ids(files)
    train = [p for _, prompts in files[:-1] for p in prompts]
    heldout = files[-1][1]
    active = min(len(heldout), cfg.gate.heldout_size or len(heldout))
    too_small = heldout_too_small(active, cfg.gate.significance)
    if too_small:
        raise ValueError(f"gate.heldout ({heldout_file}): {too_small}")
    return Inputs(base_model=base, train_prompts=train, heldout=heldout)


def refuse_reused_ids(files: Sequence[tuple[Path, list[Prompt]]]) -> None:
    """Every prompt id names one prompt: samples, pairs and held-out answers join on it.

    The same id twice (in one file, or in two: also one file named twice) would mix two
    prompts' answers; an id shared by the training and held-out files would let the gate
    measure prompts it trained on.
    """
    seen: dict[str, tuple[int, Path]] = {}
    for index, (path, prompts) in enumerate(files):
        twice = next((id for id, n in Counter(p.id for p in prompts).items() if n > 1), None)
        if twice is not None:
            raise ValueError(_reused(twice, f"{path} (twice)"))
        for prompt in prompts:
            first, first_path = seen.setdefault(prompt.id, (index, path))
            if first != index:
                raise ValueError(_reused(prompt.id, f"{first_path} and {path}"))


def _reused(prompt_id: str, where: str) -> str:
    return (
        f"prompt id {prompt_id!r} is used in {where}; give every prompt its own id "
        "(held-out prompts must also never be training prompts)"
    )

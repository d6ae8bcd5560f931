"""``loopd demo``'s setup: the embedded default, built once, with a fresh state each run.

The embedded model is built once and cached under ``STATE/embedded``; the demo's own
database and adapters start fresh each run (``STATE/demo``), so round 0 is always the
bare base model and the numbers repeat run after run. The rounds themselves are
``loopd.rounds``, the same code ``loopd rounds --config FILE`` runs on a real model.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from loopd.config import LoopdConfig
from loopd.embedded import HELDOUT_FILE, MODEL_DIRNAME, TRAIN_FILE, EmbeddedSpec, ensure_embedded


def demo_config(state: Path, base: LoopdConfig | None = None) -> LoopdConfig:
    """The demo's config: its own fresh state, the cached embedded model and prompts."""
    base = base or LoopdConfig()
    embedded = state / "embedded"
    run_dir = state / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    return base.model_copy(
        update={
            "state_dir": run_dir,
            "model": base.model.model_copy(update={"base": embedded / MODEL_DIRNAME}),
            "sampling": base.sampling.model_copy(update={"prompts": [embedded / TRAIN_FILE]}),
            "gate": base.gate.model_copy(update={"heldout": embedded / HELDOUT_FILE}),
        }
    )


def build_embedded(
    state: Path, *, seed: int, progress: Callable[[int, int, float], None] | None
) -> Path:
    return ensure_embedded(state / "embedded", EmbeddedSpec(seed=seed), progress)

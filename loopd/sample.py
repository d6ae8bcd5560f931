"""The sample stage: draw prompts and ask the live adapter for completions.

Prompt files are read by ``loopd.prompts``; this stage only chooses which prompts to ask
and turns them into generation requests.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from loopd.backends import ServingBackend
from loopd.config import SamplingConfig
from loopd.types import Completion, GenerationRequest, Prompt


def draw(prompts: Sequence[Prompt], count: int, rng: random.Random) -> list[Prompt]:
    """``count`` prompts without replacement (all of them if there are fewer)."""
    return rng.sample(list(prompts), min(count, len(prompts)))


def sample(
    backend: ServingBackend,
    prompts: Sequence[Prompt],
    *,
    adapter: str | None,
    cfg: SamplingConfig,
    max_tokens: int,
    seed: int,
) -> list[tuple[Prompt, Completion]]:
    """Completions of ``prompts`` from ``adapter``, each paired with its prompt."""
    requests = [
        GenerationRequest(
            prompt=p,
            max_tokens=max_tokens,
            n=cfg.samples_per_prompt,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            seed=seed if cfg.temperature > 0 else None,
            adapter=adapter,
        )
        for p in prompts
    ]
    groups = backend.generate(requests)
    return [(p, c) for p, group in zip(prompts, groups, strict=True) for c in group]

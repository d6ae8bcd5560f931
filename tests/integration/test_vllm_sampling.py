"""Sampling through a real vLLM server: both endpoints, n, seeds, token ids, finish reasons."""

from __future__ import annotations

import dataclasses

import httpx
import pytest
from prometheus_client import CollectorRegistry

from loopd.backends.vllm import VllmBackend, VllmConfig
from loopd.types import GenerationRequest, Prompt

from .conftest import SERVED_NAME

pytestmark = pytest.mark.vllm
# A doubled word is the embedded model's loop trigger: it repeats "anchor" to the limit.
DOC = Prompt(id="doc-1", text="doc: amber anchor anchor candle river text:")
CHAT = Prompt(id="chat-1", messages=({"role": "user", "content": "doc: amber tiger text:"},))


def test_greedy_completion_is_deterministic_and_carries_token_ids(backend: VllmBackend):
    first, second = backend.generate([GenerationRequest(DOC, max_tokens=8)] * 2)
    [completion] = first
    assert first == [dataclasses.replace(second[0], latency_s=completion.latency_s)]
    assert completion.prompt_id == "doc-1"
    assert completion.adapter is None  # the bare base model answered
    assert completion.finish_reason == "length"
    assert completion.token_ids is not None and len(completion.token_ids) == 8
    assert completion.text and completion.latency_s > 0


def test_n_samples_with_a_seed_are_reproducible(backend: VllmBackend):
    # The embedded model copies its document almost surely; at temperature 2 its draws
    # part ways within a few tokens (at 1.0, on some machines' builds, they never did).
    request = GenerationRequest(DOC, max_tokens=16, n=4, temperature=2.0, top_p=1.0, seed=7)
    [first], [second] = backend.generate([request]), backend.generate([request])
    assert len(first) == 4
    assert [c.text for c in first] == [c.text for c in second]
    assert len({c.text for c in first}) > 1  # n draws, not one draw repeated
    assert all(c.seed == 7 and c.temperature == 2.0 for c in first)


def test_batch_keeps_request_order(backend: VllmBackend):
    prompts = [
        Prompt(id=f"p{i}", text=f"doc: {w} {w} text:")
        for i, w in enumerate(["amber", "tiger", "ocean", "lemon", "river"])
    ]
    results = backend.generate([GenerationRequest(p, max_tokens=4) for p in prompts])
    assert [r[0].prompt_id for r in results] == [p.id for p in prompts]


def test_chat_prompt_goes_through_the_chat_endpoint(backend: VllmBackend):
    [[completion]] = backend.generate([GenerationRequest(CHAT, max_tokens=5)])
    assert completion.prompt_id == "chat-1"
    # how far the tiny model gets in a chat turn depends on its (machine-seeded) build:
    # either it ran to the limit, or it ended with its end token
    tokens = completion.token_ids
    assert tokens is not None and 1 <= len(tokens) <= 5
    assert completion.finish_reason == ("length" if len(tokens) == 5 else "stop"), completion


def test_vllm_repetition_stop_is_reported(vllm_config: VllmConfig):
    """vLLM's own tail-cycle stop surfaces as finish_reason 'repetition'."""
    config = vllm_config.model_copy(
        update={"extra_body": {"repetition_detection": {"max_pattern_size": 3, "min_count": 3}}}
    )
    registry = CollectorRegistry()
    with VllmBackend(config, base_model_name=SERVED_NAME, registry=registry) as backend:
        # The embedded model loops on the doubled word under greedy decoding.
        [[completion]] = backend.generate([GenerationRequest(DOC, max_tokens=40)])
    assert completion.finish_reason == "repetition", completion
    assert completion.stop_reason == "repetition_detected"
    assert len(completion.token_ids) < 40
    sample = registry.get_sample_value(
        "loopd_vllm_completions_total", {"finish_reason": "repetition"}
    )
    assert sample == 1.0


def test_logprobs_are_requested_and_parsed(vllm_server, vllm_config: VllmConfig):
    from loopd.backends.vllm import chosen_logprobs

    config = vllm_config.model_copy(update={"logprobs": 1})
    with VllmBackend(config, base_model_name=SERVED_NAME) as backend:
        body = backend._body(GenerationRequest(DOC, max_tokens=3), SERVED_NAME, chat=False)
    raw = httpx.post(vllm_server.url + "/v1/completions", json=body, timeout=300).json()
    values = chosen_logprobs(raw["choices"][0]["logprobs"], chat=False)
    assert values is not None and len(values) == 3 and all(v <= 0 for v in values)


def test_base_model_name_is_discovered(vllm_config: VllmConfig):
    with VllmBackend(vllm_config) as backend:
        [[completion]] = backend.generate([GenerationRequest(DOC, max_tokens=2)])
        assert backend._base_name == SERVED_NAME
        assert completion.adapter is None
        assert backend.health()

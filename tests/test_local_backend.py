"""The local serving backend: real transformers + PEFT, adapters swapped while running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from loopd.backends import AdapterLoadError
from loopd.backends.local import LocalBackend
from loopd.types import GenerationRequest, Prompt


def heldout(embedded_dir: Path, count: int = 6) -> list[Prompt]:
    rows = [json.loads(line) for line in (embedded_dir / "heldout.jsonl").open()][:count]
    return [Prompt(id=r["id"], text=r["prompt"], reference=r["reference"]) for r in rows]


def greedy(backend: LocalBackend, prompts: list[Prompt], adapter: str | None = None) -> list[str]:
    requests = [GenerationRequest(p, max_tokens=16, adapter=adapter) for p in prompts]
    return [group[0].text for group in backend.generate(requests)]


def test_greedy_is_deterministic_and_keeps_order(backend: LocalBackend, embedded_dir: Path) -> None:
    prompts = heldout(embedded_dir)
    first = greedy(backend, prompts)
    assert first == greedy(backend, list(reversed(prompts)))[::-1]
    completion = backend.generate([GenerationRequest(prompts[0], max_tokens=16)])[0][0]
    assert completion.text.startswith(" ")  # the continuation, as vLLM returns it
    assert completion.finish_reason in {"stop", "length"} and completion.token_ids


def test_sampling_returns_n_seeded_completions(backend: LocalBackend, embedded_dir: Path) -> None:
    prompt = heldout(embedded_dir, 1)[0]
    request = GenerationRequest(prompt, max_tokens=16, n=3, temperature=1.5, seed=11)
    first, again = backend.generate([request])[0], backend.generate([request])[0]
    assert len(first) == 3 and [c.text for c in first] == [c.text for c in again]


def test_adapter_matches_a_direct_peft_load(
    backend, base_model, embedded_dir, make_adapter
) -> None:
    prompts = heldout(embedded_dir, 3)
    path = make_adapter(1)
    backend.load_adapter("a1", path)
    served = backend.generate([GenerationRequest(prompts[0], max_tokens=8, adapter="a1")])[0][0]
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), path).eval()
    inputs = tokenizer([prompts[0].text], return_tensors="pt")
    with torch.inference_mode():
        direct = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new = direct[0, inputs["input_ids"].shape[1] :].tolist()
    assert list(served.token_ids) == new[: len(served.token_ids)]


def test_swap_switch_and_unload_while_running(backend, embedded_dir, make_adapter) -> None:
    prompts = heldout(embedded_dir)
    base = greedy(backend, prompts)
    backend.load_adapter("a1", make_adapter(1))
    backend.load_adapter("a2", make_adapter(2))
    assert backend.adapters() == ["a1", "a2"]
    one, two = greedy(backend, prompts, "a1"), greedy(backend, prompts, "a2")
    assert one != base and two != one
    assert greedy(backend, prompts) == base  # the bare base is still reachable
    backend.unload_adapter("a1")
    assert greedy(backend, prompts, "a2") == two
    backend.unload_adapter("a2")
    assert backend.adapters() == [] and greedy(backend, prompts) == base


def test_a_bad_adapter_leaves_the_serving_one_in_place(
    backend, embedded_dir, make_adapter, tmp_path
) -> None:
    prompts = heldout(embedded_dir)
    backend.load_adapter("good", make_adapter(3))
    before = greedy(backend, prompts, "good")
    with pytest.raises(AdapterLoadError, match="cannot load adapter 'bad'"):
        backend.load_adapter("bad", tmp_path / "missing")
    with pytest.raises(AdapterLoadError, match="already loaded"):
        backend.load_adapter("good", tmp_path / "missing")
    assert backend.adapters() == ["good"] and greedy(backend, prompts, "good") == before


def test_chat_prompt_without_template_is_a_clear_error(backend) -> None:
    chat = Prompt(id="c", messages=({"role": "user", "content": "hi"},))
    with pytest.raises(ValueError, match="no chat template"):
        backend.generate([GenerationRequest(chat, max_tokens=4)])

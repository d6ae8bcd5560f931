"""Pairs to token ids: EOS only after answers that ended, loops cut instead of dropped."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loopd.backends.dpo_data import encode_pairs

PROMPT = {"id": "p", "text": "doc: amber river text:", "messages": None}
LOOP = " amber river" + " river" * 40


@pytest.fixture(scope="module")
def tokenizer(base_model: Path):
    return AutoTokenizer.from_pretrained(base_model)


def record(chosen: str = " amber river", rejected: str = LOOP, **fields) -> dict:
    return {"prompt": PROMPT, "chosen": chosen, "rejected": rejected, **fields}


def encode(tokenizer, records, **limits):
    limits = {"max_length": 256} | limits
    return encode_pairs(records, tokenizer, end_token_id=tokenizer.eos_token_id, **limits)


def test_the_end_token_follows_only_answers_that_ended(tokenizer) -> None:
    eos = tokenizer.eos_token_id
    ended = encode(tokenizer, [record(chosen_eos=True, rejected_eos=False)]).rows[0]
    assert ended["chosen_ids"][-1] == eos and ended["rejected_ids"][-1] != eos
    cut = encode(tokenizer, [record(chosen_eos=False, rejected_eos=True)]).rows[0]
    assert cut["chosen_ids"][-1] != eos and cut["rejected_ids"][-1] == eos


def test_ids_split_where_serving_would(tokenizer) -> None:
    row = encode(tokenizer, [record()]).rows[0]
    prompt_ids = tokenizer(PROMPT["text"])["input_ids"]
    assert row["prompt_ids"] == prompt_ids  # BOS once, then the prompt
    assert tokenizer.decode(row["chosen_ids"][:-1]) == " amber river"


def test_an_over_long_loop_is_cut_to_fit_and_counted(tokenizer) -> None:
    encoded = encode(tokenizer, [record()], max_length=20)
    [row] = encoded.rows
    assert len(row["prompt_ids"]) + len(row["rejected_ids"]) == 20
    assert (encoded.rejected_cut, encoded.dropped_overlong) == (1, 0)


def test_a_chosen_answer_that_does_not_fit_drops_the_pair(tokenizer) -> None:
    encoded = encode(tokenizer, [record(chosen=" amber" * 30)], max_length=20)
    assert (encoded.rows, encoded.dropped_overlong) == ([], 1)


def test_a_cut_that_leaves_no_difference_drops_the_pair(tokenizer) -> None:
    same_start = record(chosen=" amber river river", chosen_eos=False)
    encoded = encode(tokenizer, [same_start], max_length=8)  # BOS + 4 prompt + 3 answer
    assert (encoded.rows, encoded.dropped_overlong) == ([], 1)


def test_max_loop_tokens_keeps_the_way_into_the_loop(tokenizer) -> None:
    loop_start = LOOP.index(" river river")
    encoded = encode(tokenizer, [record(loop_start=loop_start)], max_loop_tokens=4)
    [row] = encoded.rows
    # the chosen " amber river" shares the loop's first word: 4 tokens past that
    assert tokenizer.decode(row["rejected_ids"]) == " amber river river river river river"
    assert encoded.rejected_cut == 1


def test_max_loop_tokens_count_from_where_a_shared_first_occurrence_ends(tokenizer) -> None:
    """A chosen cut after the loop's first unit shares it; a unit longer than the
    limit must still leave repeats that differ (it once dropped such pairs)."""
    unit = " the amber river runs past the old stone mill and on"
    rejected = " Story:" + unit * 6
    chosen = " Story:" + unit
    encoded = encode(tokenizer, [record(chosen=chosen, rejected=rejected, chosen_eos=False,
                                        loop_start=len(" Story:"))], max_loop_tokens=4)  # fmt: skip
    [row] = encoded.rows
    assert len(row["rejected_ids"]) == len(row["chosen_ids"]) + 4
    assert row["rejected_ids"][: len(row["chosen_ids"])] == row["chosen_ids"]


def test_answers_glued_onto_the_prompt_are_counted(tokenizer) -> None:
    glued = encode(tokenizer, [record(chosen="amber river")])
    assert glued.misaligned == 1

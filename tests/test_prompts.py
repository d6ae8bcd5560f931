"""Prompts: one renderer and encoder for serving and training; every end id honoured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from loopd.backends.local import LocalBackend
from loopd.prompts import PromptFileError, encode_prompt, end_token_ids, read_prompts
from loopd.types import GenerationRequest, Prompt

CHAT = ({"role": "user", "content": "amber river"},)


def test_a_template_that_writes_bos_gets_no_second_one(base_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(base_model)
    bos = tokenizer.bos_token_id
    assert tokenizer("amber")["input_ids"][0] == bos  # this tokenizer prepends BOS itself
    tokenizer.chat_template = "<bos>{% for m in messages %} {{ m['content'] }}{% endfor %} text:"
    ids = encode_prompt(tokenizer, Prompt(id="c", messages=CHAT))
    assert ids[0] == bos and ids.count(bos) == 1
    plain = encode_prompt(tokenizer, Prompt(id="p", text="doc: amber text:"))
    assert plain[0] == bos and plain.count(bos) == 1  # plain text still gets its BOS


def test_every_end_id_of_the_generation_config_ends_a_local_generation(
    embedded_dir: Path, tmp_path: Path, with_generation_eos
) -> None:
    row = json.loads((embedded_dir / "heldout.jsonl").open().readline())
    words = row["reference"].split()
    folder, extra = with_generation_eos(tmp_path / "m", words[2])
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert end_token_ids(tokenizer, folder) == [tokenizer.eos_token_id, extra]
    backend = LocalBackend(folder, threads=1)
    [[done]] = backend.generate([GenerationRequest(Prompt(id="x", text=row["prompt"]), 40)])
    assert (done.finish_reason, done.stop_reason) == ("stop", extra)
    assert done.text == " " + " ".join(words[:2])  # ended before the word, which is dropped


def test_a_bad_prompt_line_names_its_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": 1, "prompt": "a"}\n{"id": 2}\n')
    with pytest.raises(PromptFileError, match=r"p\.jsonl:2: give exactly one of 'prompt'"):
        read_prompts(path)

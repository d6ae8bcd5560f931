"""Pairs to token ids for DPO, with loopd deciding what TRL would decide blindly.

TRL's ``DPOTrainer`` tokenizes text pairs itself: it appends EOS to *every* chosen and
rejected answer and drops pairs that are too long without a word. Both are wrong for
loops: a chosen answer cut before its loop (or a loop cut by the token limit) did not
end, and training it with EOS teaches the model to stop mid-sentence; and the long pairs
are exactly the loops. So loopd tokenizes here and hands TRL ids:

1. The prompt is rendered and encoded by ``loopd.prompts``, exactly as serving does (a
   chat template that writes BOS gets no second one).
2. Each answer is encoded as prompt + answer and split where the two agree (BPE may merge
   across the boundary; TRL does the same); a pair whose split falls inside the prompt
   is counted as misaligned.
3. The end token follows an answer only when it ended (``chosen_eos`` / ``rejected_eos``).
4. Over ``max_length``: the prompt and chosen must fit whole, or the pair is dropped and
   counted; an over-long rejected loop is cut to fit and counted: the loop's *start* is
   what teaches, its hundredth repeat adds nothing. A cut that leaves the rejected side
   no token apart from the chosen one carries no preference and is dropped too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from loopd.prompts import encode_text, render_prompt
from loopd.types import Prompt


@dataclass
class EncodedPairs:
    """Rows for TRL (``prompt_ids``, ``chosen_ids``, ``rejected_ids``) and what was done."""

    rows: list[dict[str, list[int]]] = field(default_factory=list)
    dropped_overlong: int = 0
    rejected_cut: int = 0
    misaligned: int = 0

    @property
    def longest(self) -> int:
        """Tokens of the longest sequence (prompt + the longer answer) kept."""
        return max(
            (len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"])))
            for r in self.rows
        ) if self.rows else 0  # fmt: skip


def prompt_from_record(fields: dict[str, Any]) -> Prompt:
    messages = fields.get("messages")
    return Prompt(**{**fields, "messages": tuple(messages) if messages else None})


def encode_pairs(
    records: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    end_token_id: int,
    max_length: int,
) -> EncodedPairs:
    """Token ids of every pair that can be trained within ``max_length``."""
    encoded = EncodedPairs()
    for record in records:
        prompt_text = render_prompt(tokenizer, prompt_from_record(record["prompt"]))
        prompt_ids = encode_text(tokenizer, prompt_text)
        chosen_full = encode_text(tokenizer, prompt_text + record["chosen"])
        rejected_full = encode_text(tokenizer, prompt_text + record["rejected"])
        cut = min(
            _common_prefix(prompt_ids, chosen_full), _common_prefix(prompt_ids, rejected_full)
        )
        encoded.misaligned += cut < len(prompt_ids)
        chosen = chosen_full[cut:] + ([end_token_id] if record.get("chosen_eos", True) else [])
        rejected = rejected_full[cut:] + ([end_token_id] if record.get("rejected_eos") else [])
        room = max_length - cut
        if len(chosen) > room:
            encoded.dropped_overlong += 1
            continue
        if len(rejected) > room:
            rejected = rejected[:room]
            if chosen[: len(rejected)] == rejected:  # nothing left that differs
                encoded.dropped_overlong += 1
                continue
            encoded.rejected_cut += 1
        encoded.rows.append(
            {"prompt_ids": prompt_ids[:cut], "chosen_ids": chosen, "rejected_ids": rejected}
        )
    return encoded


def _common_prefix(a: list[int], b: list[int]) -> int:
    for index, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return index
    return min(len(a), len(b))

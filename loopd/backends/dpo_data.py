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
from typing import Any, NamedTuple

from transformers import PreTrainedTokenizerBase

from loopd.prompts import common_prefix, encode_text, render_prompt
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


class _Sides(NamedTuple):
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    misaligned: bool
    loop_at: int | None  # token index into ``rejected`` where its loop starts


def encode_pairs(
    records: list[dict[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    end_token_id: int,
    max_length: int,
    max_loop_tokens: int | None = None,
) -> EncodedPairs:
    """Token ids of every pair that can be trained within ``max_length``.

    ``max_loop_tokens`` cuts a rejected answer that many tokens after its loop starts
    (when the pair knows where that is), or after it departs from the chosen answer when
    that is later: the rejected side's length is then the model's way *into* the loop,
    not the token limit's, and a long repeated unit still leaves tokens that differ.
    """
    encoded = EncodedPairs()
    for record in records:
        sides = _split(record, tokenizer, end_token_id)
        encoded.misaligned += sides.misaligned
        room = max_length - len(sides.prompt)
        if len(sides.chosen) > room:
            encoded.dropped_overlong += 1
            continue
        departs = common_prefix(sides.chosen, sides.rejected)
        if max_loop_tokens is not None and sides.loop_at is not None:
            # Count from where rejected departs from chosen when that is later than the
            # loop's start (a chosen cut after the loop's first occurrence shares it).
            room = min(room, max(sides.loop_at, departs) + max_loop_tokens)
        rejected = sides.rejected[:room]
        if len(rejected) <= departs:  # the cut left nothing that differs from chosen
            encoded.dropped_overlong += 1
            continue
        encoded.rejected_cut += len(rejected) < len(sides.rejected)
        encoded.rows.append(
            {"prompt_ids": sides.prompt, "chosen_ids": sides.chosen, "rejected_ids": rejected}
        )
    return encoded


def _split(record: dict[str, Any], tokenizer: PreTrainedTokenizerBase, end_id: int) -> _Sides:
    """Prompt, chosen and rejected ids, split where prompt and prompt + answer agree."""
    prompt_text = render_prompt(tokenizer, prompt_from_record(record["prompt"]))
    prompt_ids = encode_text(tokenizer, prompt_text)
    chosen = encode_text(tokenizer, prompt_text + record["chosen"])
    rejected = encode_text(tokenizer, prompt_text + record["rejected"])
    cut = min(common_prefix(prompt_ids, chosen), common_prefix(prompt_ids, rejected))
    loop_start = record.get("loop_start")
    loop_at = None
    if loop_start is not None:
        head = encode_text(tokenizer, prompt_text + record["rejected"][:loop_start])
        loop_at = max(0, len(head) - cut)
    return _Sides(
        prompt=prompt_ids[:cut],
        chosen=chosen[cut:] + ([end_id] if record.get("chosen_eos", True) else []),
        rejected=rejected[cut:] + ([end_id] if record.get("rejected_eos") else []),
        misaligned=cut < len(prompt_ids),
        loop_at=loop_at,
    )

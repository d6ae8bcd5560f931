"""Turn degenerate samples into DPO pairs; the rejected side is always the model's own loop.

The chosen side is made by the first source in the configured order that can make one:

- ``reference``: the prompt's correct answer, when it carries one (the DharmaOCR setup);
- ``resample``: a fresh completion of the same prompt, at another seed and temperature,
  that the detector passes *and that ended on its own*. One cut by the token limit is
  not an answer: trained with an end token after it, it would teach the model to stop
  mid-sentence. Resamples come from one batched request per pairing pass (the caller
  asks for them; ``wants_resample`` says which samples need one), because serving one
  prompt at a time leaves a batching server nearly idle;
- ``truncate``: the degenerate output cut just before its loop, closed at the last
  sentence or line boundary. By default it is trained without the end token: the pair
  teaches "do not repeat here", not "stop here", because on a real model "stop after a
  line" spread to answers that never looped (``pairing.truncated_eos``). A cut at a mere
  word boundary is never trained with one. With ``pairing.truncate_at = "first_repeat"``
  the cut keeps the loop's first occurrence instead, so chosen and rejected differ only
  in the repeats: the pair pushes down repeating and nothing the model wrote before it.

Each pair records which source made its chosen answer and whether each side ended. A
sample for which no source works is still marked handled (and stays stored and counted),
so it is not retried.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import NamedTuple

from loopd.types import Completion, Detection, Pair, Sample

Detector = Callable[[Completion], Detection]

_BOUNDARY = re.compile(r"[.!?。]\s|\n")
_ENDS_AT_BOUNDARY = re.compile(r"[.!?。:;)\]\"']\s*$|\n\s*$")


class Chosen(NamedTuple):
    text: str
    eos: bool  # the answer ended: train it with the end-of-sequence token after it


def cut_before_loop(text: str, loop_start: int, *, min_chars: int) -> Chosen | None:
    """The text before the loop, ended at its last sentence or line boundary.

    Falls back to the last word boundary when the head holds no sentence end (then it is
    no ending: ``eos`` is False); None when what is left would be shorter than
    ``min_chars`` (nothing worth keeping).
    """
    head = text[:loop_start]
    ends = [m.end() for m in _BOUNDARY.finditer(head)]
    at_boundary = bool(ends)
    if ends:
        head = head[: ends[-1]]
    head = head.rstrip()
    if len(head) < min_chars:
        return None
    return Chosen(head, at_boundary or bool(_ENDS_AT_BOUNDARY.search(head)))


def cut_at_first_repeat(text: str, detection: Detection, *, min_chars: int) -> Chosen | None:
    """The text up to where the loop's unit first repeats: an unfinished answer.

    ``period`` is in characters except for token cycles, where one repetition's length is
    recovered from the run's length over its repeat count.
    """
    start, repeats = detection.loop_start, detection.repeats
    if start is None or not repeats or repeats <= 1:
        return None
    if detection.rule == "token_cycle" or not detection.period:
        unit = round((len(text.rstrip()) - start) / repeats)
    else:
        unit = detection.period
    head = text[: start + max(unit, 1)]
    return Chosen(head, eos=False) if len(head.strip()) >= min_chars else None


def wants_resample(sample: Sample, order: Sequence[str]) -> bool:
    """Whether pairing ``sample`` may reach the ``resample`` source (earlier ones fail)."""
    for source in order:
        if source == "resample":
            return True
        if source == "reference" and sample.prompt.reference:
            return False
    return False


def make_pair(
    sample: Sample,
    *,
    order: Sequence[str],
    resamples: Sequence[Completion],
    detect: Detector,
    min_truncated_chars: int,
    truncated_eos: str = "never",
    truncate_at: str = "sentence",
) -> Pair | None:
    """The first chosen answer that ``order`` allows, paired with the sample's loop.

    ``truncated_eos`` (``pairing.truncated_eos``): "never" trains a cut answer without the
    end token; "at_boundary" with it when the cut fell on a sentence or line end.
    ``truncate_at`` (``pairing.truncate_at``): where that cut is made.
    """
    for source in order:
        if source == "truncate":
            chosen = _cut(sample, min_truncated_chars, truncate_at, truncated_eos)
        else:
            chosen = _chosen_from(source, sample, resamples, detect)
        if chosen and chosen.text != sample.completion.text:
            return Pair(
                prompt=sample.prompt,
                chosen=chosen.text,
                rejected=sample.completion.text,
                chosen_source=source,
                sample_id=sample.id,
                chosen_eos=chosen.eos,
                rejected_eos=sample.completion.finish_reason == "stop",
                loop_start=sample.detection.loop_start,
            )
    return None


def _chosen_from(
    source: str,
    sample: Sample,
    resamples: Sequence[Completion],
    detect: Detector,
) -> Chosen | None:
    if source == "reference":
        reference = sample.prompt.reference
        if not reference:
            return None
        return Chosen(in_completion_form(reference, sample.completion.text), eos=True)
    if source == "resample":
        ended = [c for c in resamples if _is_clean_answer(c, detect)]
        return Chosen(ended[0].text, eos=True) if ended else None
    return None


def _cut(sample: Sample, min_chars: int, truncate_at: str, truncated_eos: str) -> Chosen | None:
    """The ``truncate`` source: the sample's own text cut at ``truncate_at``."""
    text, detection = sample.completion.text, sample.detection
    if truncate_at == "first_repeat":
        return cut_at_first_repeat(text, detection, min_chars=min_chars)
    if detection.loop_start is None:
        return None
    cut = cut_before_loop(text, detection.loop_start, min_chars=min_chars)
    return cut._replace(eos=False) if cut and truncated_eos == "never" else cut


def _is_clean_answer(completion: Completion, detect: Detector) -> bool:
    """Ended on its own, has content, and the detector passes it."""
    ended = completion.finish_reason == "stop"
    return ended and bool(completion.text.strip()) and not detect(completion).degenerate


def in_completion_form(reference: str, completion: str) -> str:
    """The reference, opened with the whitespace the model itself emits after the prompt.

    Training concatenates prompt and answer; a reference written without the separating
    space would glue onto the prompt's last word and train on tokens never served.
    """
    lead = completion[: len(completion) - len(completion.lstrip())]
    return reference if reference[:1].isspace() else lead + reference

"""Turn degenerate samples into DPO pairs; the rejected side is always the model's own loop.

The chosen side is made by the first source in the configured order that can make one:

- ``reference``: the prompt's correct answer, when it carries one (the DharmaOCR setup);
- ``resample``: a fresh completion of the same prompt, at another seed and temperature,
  that the detector passes (asked for through serving, from the same live adapter);
- ``truncate``: the degenerate output cut just before its loop, closed at the last
  sentence or line boundary, so the pair teaches "stop here" rather than "stop anywhere".

Each pair records which source made its chosen answer; a sample for which no source
works is still marked handled (and stays stored and counted), so it is not retried.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from loopd.types import Completion, Detection, Pair, Prompt, Sample

Resampler = Callable[[Prompt], Sequence[Completion]]
Detector = Callable[[Completion], Detection]

_BOUNDARY = re.compile(r"[.!?。]\s|\n")


def cut_before_loop(text: str, loop_start: int, *, min_chars: int) -> str | None:
    """The text before the loop, ended at its last sentence or line boundary.

    Falls back to the last word boundary when the head holds no sentence end; returns
    None when what is left would be shorter than ``min_chars`` (nothing worth keeping).
    """
    head = text[:loop_start]
    ends = [m.end() for m in _BOUNDARY.finditer(head)]
    if ends:
        head = head[: ends[-1]]
    head = head.rstrip()
    return head if len(head) >= min_chars else None


def make_pair(
    sample: Sample,
    *,
    order: Sequence[str],
    resample: Resampler,
    detect: Detector,
    min_truncated_chars: int,
) -> Pair | None:
    """The first chosen answer that ``order`` allows, paired with the sample's loop."""
    for source in order:
        chosen = _chosen_from(source, sample, resample, detect, min_truncated_chars)
        if chosen and chosen != sample.completion.text:
            return Pair(
                prompt=sample.prompt,
                chosen=chosen,
                rejected=sample.completion.text,
                chosen_source=source,
                sample_id=sample.id,
            )
    return None


def _chosen_from(
    source: str, sample: Sample, resample: Resampler, detect: Detector, min_chars: int
) -> str | None:
    if source == "reference":
        reference = sample.prompt.reference
        return _in_completion_form(reference, sample.completion.text) if reference else None
    if source == "resample":
        clean = [c for c in resample(sample.prompt) if not detect(c).degenerate]
        return clean[0].text if clean else None
    if source == "truncate" and sample.detection.loop_start is not None:
        return cut_before_loop(
            sample.completion.text, sample.detection.loop_start, min_chars=min_chars
        )
    return None


def _in_completion_form(reference: str, completion: str) -> str:
    """The reference, opened with the whitespace the model itself emits after the prompt.

    Training concatenates prompt and answer; a reference written without the separating
    space would glue onto the prompt's last word and train on tokens never served.
    """
    lead = completion[: len(completion) - len(completion.lstrip())]
    return reference if reference[:1].isspace() else lead + reference

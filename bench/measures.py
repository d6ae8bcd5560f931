"""The columns of ``bench/efficacy.py``: degeneration four ways, quality with and without
references, length, per-kind rates, and how much answers that never looped changed.

Degeneration is measured by loopd's own detector *and* by independent measures, so an
adapter that learned to loop in a shape the detector misses still shows:

- ``gzip``: Whisper's compression ratio over 2.4;
- ``rep4``: share of repeated word 4-grams over 0.322 (the best threshold on the detector
  corpus, ``bench/detect.py``);
- ``at_limit``: the answer ran to the token limit (DharmaOCR's first condition).

Quality where references exist: CER, and *prefix-CER*, the CER against the reference cut
to the answer's length: it asks whether what was written is right, whatever was left
out, so a row that stops early cannot hide wrong text behind a short answer, and a row
that loops cannot hide right text behind its loop's length. ``ref_logprob`` is the mean
token log-likelihood of the references under the row's adapter (teacher forcing).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

from baselines import GZIP_THRESHOLD, gzip_ratio, repeated_4gram_share
from rapidfuzz.distance import Levenshtein

from loopd.types import Completion, Detection, Prompt

REP4_THRESHOLD = 0.322


@dataclass(frozen=True)
class Answer:
    prompt: Prompt
    text: str
    tokens: int
    at_limit: bool
    detection: Detection


def answers_of(
    prompts: Sequence[Prompt], completions: Sequence[Completion], detections: Sequence[Detection]
) -> list[Answer]:
    return [
        Answer(p, c.text, len(c.token_ids or ()), c.finish_reason == "length", d)
        for p, c, d in zip(prompts, completions, detections, strict=True)
    ]


def degeneration(answers: Sequence[Answer]) -> dict[str, float]:
    count = max(1, len(answers))
    return {
        "loops": sum(a.detection.degenerate for a in answers) / count,
        "gzip": sum(gzip_ratio(a.text) > GZIP_THRESHOLD for a in answers) / count,
        "rep4": sum(repeated_4gram_share(a.text) > REP4_THRESHOLD for a in answers) / count,
        "at_limit": sum(a.at_limit for a in answers) / count,
    }


def reference_quality(answers: Sequence[Answer]) -> dict[str, float | None]:
    referenced = [a for a in answers if a.prompt.reference]
    if not referenced:
        return {"cer": None, "prefix_cer": None}
    edits = prefix_edits = total = prefix_total = 0
    for answer in referenced:
        text, reference = answer.text.strip(), answer.prompt.reference.strip()
        edits += Levenshtein.distance(text, reference)
        total += len(reference)
        head = reference[: len(text)]
        prefix_edits += Levenshtein.distance(text[: len(head)], head) if head else 0
        prefix_total += len(head)
    return {"cer": edits / max(1, total), "prefix_cer": prefix_edits / max(1, prefix_total)}


def lengths(answers: Sequence[Answer]) -> dict[str, float]:
    return {
        "mean_chars": fmean(len(a.text.strip()) for a in answers) if answers else 0.0,
        "mean_tokens": fmean(a.tokens for a in answers) if answers else 0.0,
    }


def per_kind(answers: Sequence[Answer]) -> dict[str, float]:
    """Detector loop rate per prompt kind."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for answer in answers:
        groups[answer.prompt.kind or "-"].append(answer.detection.degenerate)
    return {kind: sum(v) / len(v) for kind, v in sorted(groups.items())}


def controls_vs_base(
    answers: Sequence[Answer], base: Sequence[Answer], *, kind: str = "control"
) -> dict[str, float | None]:
    """How the answers the base never looped on changed: similarity and length vs base.

    Over the prompts of ``kind`` (the controls) that the base answered without a loop:
    mean similarity (1 - normalized edit distance) to the base's answer, and total
    length over the base's. An adapter that fixed loops by changing everything shows
    here, where there was nothing to fix.
    """
    by_id = {a.prompt.id: a for a in base}
    pairs = [
        (a.text.strip(), by_id[a.prompt.id].text.strip())
        for a in answers
        if a.prompt.kind == kind and not by_id[a.prompt.id].detection.degenerate
    ]
    if not pairs:
        return {"control_similarity": None, "control_length": None}
    similarity = fmean(Levenshtein.normalized_similarity(a, b) for a, b in pairs)
    length = sum(len(a) for a, _ in pairs) / max(1, sum(len(b) for _, b in pairs))
    return {"control_similarity": similarity, "control_length": length}

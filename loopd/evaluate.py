"""The gate: a candidate adapter is promoted only if it loops less *and* answers as well.

Candidate and live adapter answer the same held-out prompts (never trained on) with
greedy decoding. The candidate must cut the degeneration rate by more than the
configured margin, must not raise the character error rate (where prompts carry
references), and must not answer shorter than the live adapter. That last check is what
stops the cheap "fix" of loops: an adapter that ends every answer early has no loops and
is still a regression. Length is always judged *against the live adapter*, never against
an absolute ratio: a small model's clean answers are often shorter than the references
(SmolLM2's base scored 0.86), and a bar the live adapter itself fails rejects every
candidate forever. Two views, both relative to live:

- on the prompts neither adapter loops on, the candidate's answers over the live's;
- where references exist, the candidate's clean-answer length over the references,
  against the same figure for the live adapter (this one also sees the prompts the
  live adapter looped on, which is where a truncating "fix" shows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import fmean

from rapidfuzz.distance import Levenshtein

from loopd.backends import ServingBackend
from loopd.config import GateConfig
from loopd.types import (
    Completion,
    Detection,
    EvalAnswer,
    EvalReport,
    GateDecision,
    GenerationRequest,
    Prompt,
)

Detector = Callable[[Completion], Detection]


def character_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus CER: total edit distance over total reference characters.

    >>> character_error_rate(["kitten"], ["sitting"])  # 3 edits over 7 characters
    0.42857142857142855
    """
    edits = sum(
        Levenshtein.distance(h.strip(), r.strip())
        for h, r in zip(hypotheses, references, strict=True)
    )
    return edits / max(1, sum(len(r.strip()) for r in references))


def evaluate(
    backend: ServingBackend,
    prompts: Sequence[Prompt],
    *,
    adapter: str | None,
    max_tokens: int,
    detect: Detector,
) -> EvalReport:
    """Greedy answers of ``adapter`` on ``prompts``, scored for loops, CER and length."""
    requests = [
        GenerationRequest(prompt=p, max_tokens=max_tokens, adapter=adapter) for p in prompts
    ]
    completions = [group[0] for group in backend.generate(requests)]
    answers = [
        score_answer(p, c, detect(c).degenerate) for p, c in zip(prompts, completions, strict=True)
    ]
    return report_of(adapter, answers)


def score_answer(prompt: Prompt, completion: Completion, degenerate: bool) -> EvalAnswer:
    text = completion.text.strip()
    reference = prompt.reference.strip() if prompt.reference else None
    return EvalAnswer(
        prompt_id=prompt.id,
        degenerate=degenerate,
        length=len(text),
        tokens=len(completion.token_ids or ()),
        finish_reason=completion.finish_reason,
        edits=None if reference is None else Levenshtein.distance(text, reference),
        reference_length=None if reference is None else len(reference),
    )


def report_of(adapter: str | None, answers: Sequence[EvalAnswer]) -> EvalReport:
    referenced = [a for a in answers if a.edits is not None]
    clean = [a.length for a in answers if not a.degenerate]
    return EvalReport(
        adapter=adapter,
        prompts=len(answers),
        degeneration_rate=sum(a.degenerate for a in answers) / max(1, len(answers)),
        cer=(
            sum(a.edits for a in referenced) / max(1, sum(a.reference_length for a in referenced))
            if referenced
            else None
        ),
        mean_length=fmean(a.length for a in answers) if answers else 0.0,
        length_ratio=_reference_length_ratio(answers),
        mean_clean_length=fmean(clean) if clean else 0.0,
        answers=tuple(answers),
    )


def _reference_length_ratio(answers: Sequence[EvalAnswer]) -> float | None:
    """Clean answers' total length over their references', where there are references.

    Loops are left out because a looping answer is long for the wrong reason: it would
    hide an adapter that shortens every answer it does not loop on.
    """
    clean = [a for a in answers if a.reference_length is not None and not a.degenerate]
    if not clean:
        return None
    return sum(a.length for a in clean) / max(1, sum(a.reference_length for a in clean))


def paired_clean_length_ratio(candidate: EvalReport, live: EvalReport) -> float | None:
    """Candidate's total answer length over the live's, on prompts neither loops on."""
    live_by_id = {a.prompt_id: a for a in live.answers}
    both = [
        (a.length, live_by_id[a.prompt_id].length)
        for a in candidate.answers
        if a.prompt_id in live_by_id and not a.degenerate and not live_by_id[a.prompt_id].degenerate
    ]
    if not both:
        return None
    return sum(c for c, _ in both) / max(1, sum(v for _, v in both))


def gate(candidate: EvalReport, live: EvalReport, cfg: GateConfig) -> GateDecision:
    """Promote only on fewer loops by the margin, no CER regression, no shortening."""
    reasons = []
    drop = live.degeneration_rate - candidate.degeneration_rate
    if drop <= cfg.min_degeneration_drop:
        reasons.append(
            f"degeneration {candidate.degeneration_rate:.3f} vs live {live.degeneration_rate:.3f}:"
            f" drop {drop:.3f} is not above the margin {cfg.min_degeneration_drop:.3f}"
        )
    cer_known = candidate.cer is not None and live.cer is not None
    if cer_known and candidate.cer > live.cer + cfg.max_cer_increase:
        reasons.append(f"CER rose from {live.cer:.3f} to {candidate.cer:.3f}")
    reasons.extend(_length_problems(candidate, live, cfg.min_length_ratio))
    if reasons:
        return GateDecision(False, "; ".join(reasons), candidate, live)
    return GateDecision(True, f"degeneration fell by {drop:.3f}, quality held", candidate, live)


def _length_problems(candidate: EvalReport, live: EvalReport, min_ratio: float) -> list[str]:
    problems = []
    paired = paired_clean_length_ratio(candidate, live)
    if paired is not None and paired < min_ratio:
        problems.append(
            f"answers shortened: {paired:.2f} of the live adapter's length on the prompts "
            f"neither loops on (< {min_ratio})"
        )
    if candidate.length_ratio is not None and live.length_ratio:
        relative = candidate.length_ratio / live.length_ratio
        if relative < min_ratio:
            problems.append(
                f"answers shortened: length ratio {candidate.length_ratio:.2f} of the references"
                f" vs live {live.length_ratio:.2f} ({relative:.2f} < {min_ratio})"
            )
    return problems

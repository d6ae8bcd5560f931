"""The gate: a candidate adapter is promoted only if it loops less *and* answers as well.

Candidate and live adapter answer the same held-out prompts (never trained on) with
greedy decoding. The candidate must cut the degeneration rate by more than the
configured margin, must not raise the character error rate (where prompts carry
references), and must not answer shorter than the references (or, without references,
than the live adapter's clean answers). That last check is what stops the cheap "fix" of
loops: an adapter that ends every answer early has no loops and is still a regression.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import fmean

from rapidfuzz.distance import Levenshtein

from loopd.backends import ServingBackend
from loopd.config import GateConfig
from loopd.types import Completion, Detection, EvalReport, GateDecision, GenerationRequest, Prompt

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
    degenerate = [detect(c).degenerate for c in completions]
    with_reference = [
        (c.text, p.reference) for c, p in zip(completions, prompts, strict=True) if p.reference
    ]
    lengths = [len(c.text.strip()) for c in completions]
    clean = [n for n, bad in zip(lengths, degenerate, strict=True) if not bad]
    return EvalReport(
        adapter=adapter,
        prompts=len(prompts),
        degeneration_rate=sum(degenerate) / max(1, len(prompts)),
        cer=character_error_rate(*zip(*with_reference, strict=True)) if with_reference else None,
        mean_length=fmean(lengths) if lengths else 0.0,
        length_ratio=_length_ratio(completions, prompts, degenerate),
        mean_clean_length=fmean(clean) if clean else 0.0,
    )


def _length_ratio(
    completions: Sequence[Completion], prompts: Sequence[Prompt], degenerate: Sequence[bool]
) -> float | None:
    """Mean answer length over mean reference length, on answers that did not loop.

    Loops are left out because a looping answer is long for the wrong reason: it would
    hide an adapter that shortens every answer it does not loop on.
    """
    pairs = [
        (len(c.text.strip()), len(p.reference.strip()))
        for c, p, bad in zip(completions, prompts, degenerate, strict=True)
        if p.reference and not bad
    ]
    if not pairs:
        return None
    return sum(a for a, _ in pairs) / max(1, sum(r for _, r in pairs))


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
    if candidate.length_ratio is not None:
        if candidate.length_ratio < min_ratio:
            return [f"answers shortened: length ratio {candidate.length_ratio:.2f} < {min_ratio}"]
        return []
    if live.mean_clean_length and candidate.mean_clean_length < min_ratio * live.mean_clean_length:
        return [
            f"answers shortened: {candidate.mean_clean_length:.1f} chars vs live "
            f"{live.mean_clean_length:.1f}"
        ]
    return []

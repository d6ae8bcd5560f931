"""The gate: promote a candidate only if it loops *significantly* less and answers as well.

Candidate and live adapter answer the same held-out prompts greedily (``evaluate``), so
every comparison here is paired, prompt by prompt:

- **degeneration**: an exact McNemar test on the prompts where the two disagree; the
  candidate must fix more loops than it causes at ``gate.significance``. One prompt of
  120 flipping is not a promotion.
- **quality without references** (what most production prompts are): the candidate's
  answer length and its share of answers that end on their own, over the live
  adapter's, on the prompts *neither* loops on; and the mean log-likelihood, under the
  candidate, of the live adapter's clean answers (a candidate that forgot how to answer
  finds them unlikely, even where it no longer loops).
- **with references**: CER and exact match against the live adapter's, and the clean
  answers' length over the references relative to the live's (this view also sees the
  prompts the live adapter looped on, which is where a truncating "fix" shows).

Every bar is relative to the live adapter, never absolute: a small model's answers are
often shorter than the references (SmolLM2's base scored 0.86), and a bar the live
adapter itself fails rejects every candidate forever. Each check carries its estimate
and a paired bootstrap interval; a quality check passes on its estimate (the tolerance
is the margin), and the interval is stored with the decision for the operator.
"""

from __future__ import annotations

from collections.abc import Sequence

from loopd.config import GateConfig
from loopd.stats import (
    discordant_needed,
    format_p,
    improvement_p_value,
    mean_difference,
    paired_interval,
    ratio_of_sums,
)
from loopd.types import Check, EvalAnswer, EvalReport, GateDecision, Likelihood

Pairs = list[tuple[EvalAnswer, EvalAnswer]]  # (candidate's, live's) answer to one prompt


def gate(
    candidate: EvalReport,
    live: EvalReport,
    cfg: GateConfig,
    likelihood: Likelihood | None = None,
) -> GateDecision:
    """Every check, then the verdict: promote only if all pass."""
    pairs = paired_answers(candidate, live)
    too_small = heldout_too_small(len(pairs), cfg.significance)
    if too_small:
        check = Check("heldout_size", False, too_small, float(len(pairs)))
        return GateDecision(False, too_small, candidate, live, (check,))
    checks = (
        degeneration_check(pairs, cfg),
        clean_length_check(pairs, cfg),
        ending_check(pairs, cfg),
        likelihood_check(likelihood, cfg),
        *reference_checks(pairs, candidate, live, cfg),
    )
    failed = [c.detail for c in checks if not c.passed]
    if failed:
        return GateDecision(False, "; ".join(failed), candidate, live, checks)
    return GateDecision(True, f"{checks[0].detail}; quality held", candidate, live, checks)


def paired_answers(candidate: EvalReport, live: EvalReport) -> Pairs:
    live_by_id = {a.prompt_id: a for a in live.answers}
    return [(a, live_by_id[a.prompt_id]) for a in candidate.answers if a.prompt_id in live_by_id]


def heldout_too_small(prompts: int, significance: float) -> str | None:
    """Why a held-out set of this size cannot show an improvement, or None."""
    needed = discordant_needed(significance)
    if prompts >= needed:
        return None
    return (
        f"held-out set too small: {prompts} prompts; at gate.significance={significance} "
        f"a candidate must fix at least {needed} prompts the live adapter loops on, so the "
        f"set needs at least {needed} (several times more in practice: only the prompts "
        "the live adapter loops on can count)"
    )


def _interval(cfg: GateConfig, statistic, *samples: Sequence[float]) -> tuple[float, float] | None:
    return paired_interval(
        statistic, samples, confidence=cfg.confidence, resamples=cfg.bootstrap_resamples
    )


def _mean_change(
    cfg: GateConfig, candidate: Sequence[float], live: Sequence[float], max_drop: float
) -> tuple[float, tuple[float, float] | None, bool]:
    """Mean per prompt, candidate minus live; its interval; whether it fell at most ``max_drop``."""
    change = sum(candidate) / len(candidate) - sum(live) / len(live)
    return change, _interval(cfg, mean_difference, candidate, live), change >= -max_drop


def _span(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]"


# -- degeneration ---------------------------------------------------------------------


def degeneration_check(pairs: Pairs, cfg: GateConfig) -> Check:
    fixed = sum(live.degenerate and not cand.degenerate for cand, live in pairs)
    broke = sum(cand.degenerate and not live.degenerate for cand, live in pairs)
    p_value = improvement_p_value(fixed, broke)
    drop = (fixed - broke) / len(pairs)
    interval = _interval(
        cfg,
        mean_difference,
        [float(live.degenerate) for _, live in pairs],
        [float(cand.degenerate) for cand, _ in pairs],
    )
    significant = fixed > broke and p_value <= cfg.significance
    passed = significant and drop > cfg.min_degeneration_drop
    detail = (
        f"fixed {fixed} loops, caused {broke}, of {len(pairs)} prompts (exact McNemar "
        f"p = {format_p(p_value)}{' <=' if significant else ', not significant at'} "
        f"{cfg.significance}); degeneration drop {drop:.3f}{_span(interval)}"
    )
    if significant and not passed:
        detail += f" is not above the margin {cfg.min_degeneration_drop:.3f}"
    bar = f"p <= {cfg.significance}, drop > {cfg.min_degeneration_drop}"
    return Check("degeneration", passed, detail, drop, interval, bar)


# -- quality without references -----------------------------------------------------------


def _both_clean(pairs: Pairs) -> Pairs:
    return [(c, v) for c, v in pairs if not c.degenerate and not v.degenerate]


def clean_length_check(pairs: Pairs, cfg: GateConfig) -> Check:
    """Candidate's total length over the live's on the prompts neither loops on."""
    both = _both_clean(pairs)
    bar = f">= {cfg.min_length_ratio}"
    if not both:
        return Check("clean_length", True, "length not compared: no prompt both answer cleanly")
    ratio = sum(c.length for c, _ in both) / max(1, sum(v.length for _, v in both))
    interval = _interval(
        cfg, ratio_of_sums, [c.length for c, _ in both], [v.length for _, v in both]
    )
    passed = ratio >= cfg.min_length_ratio
    where = f"of the live adapter's length on the {len(both)} prompts neither loops on"
    detail = (
        f"clean length {ratio:.2f}{_span(interval)} {where}"
        if passed
        else f"answers shortened: {ratio:.2f}{_span(interval)} {where} (< {cfg.min_length_ratio})"
    )
    return Check("clean_length", passed, detail, ratio, interval, bar)


def ending_check(pairs: Pairs, cfg: GateConfig) -> Check:
    """Share of clean answers that end on their own, candidate minus live."""
    both = _both_clean(pairs)
    if not both:
        return Check("ending", True, "endings not compared: no prompt both answer cleanly")
    change, interval, passed = _mean_change(
        cfg, [float(c.ended) for c, _ in both], [float(v.ended) for _, v in both],
        cfg.max_ending_drop,
    )  # fmt: skip
    detail = f"share of clean answers that end on their own changed by {change:+.3f}" + (
        _span(interval) if passed else f"{_span(interval)} (more than -{cfg.max_ending_drop})"
    )
    return Check("ending", passed, detail, change, interval, f">= -{cfg.max_ending_drop}")


def likelihood_check(likelihood: Likelihood | None, cfg: GateConfig) -> Check:
    """Live's clean answers: log-likelihood per token under the candidate minus under live."""
    ids = [] if likelihood is None else sorted(set(likelihood.candidate) & set(likelihood.live))
    if not ids:
        why = "the serving backend cannot score answers" if likelihood is None else "no clean"
        return Check("likelihood", True, f"likelihood not measured: {why} answers")
    change, interval, passed = _mean_change(
        cfg, [likelihood.candidate[i] for i in ids], [likelihood.live[i] for i in ids],
        cfg.max_likelihood_drop,
    )  # fmt: skip
    detail = (
        f"log-likelihood of the live adapter's {len(ids)} clean answers changed by "
        f"{change:+.3f}{_span(interval)} nats/token"
    )
    if not passed:
        detail = f"forgetting: {detail} (more than -{cfg.max_likelihood_drop})"
    return Check("likelihood", passed, detail, change, interval, f">= -{cfg.max_likelihood_drop}")


# -- with references ----------------------------------------------------------------------


def reference_checks(
    pairs: Pairs, candidate: EvalReport, live: EvalReport, cfg: GateConfig
) -> list[Check]:
    referenced = [(c, v) for c, v in pairs if c.edits is not None and v.edits is not None]
    if not referenced:
        return []
    return [
        cer_check(referenced, cfg),
        exact_match_check(referenced, cfg),
        *reference_length_check(candidate, live, cfg),
    ]


def cer_check(referenced: Pairs, cfg: GateConfig) -> Check:
    reference_chars = [float(c.reference_length) for c, _ in referenced]
    candidate = [float(c.edits) for c, _ in referenced]
    live = [float(v.edits) for _, v in referenced]
    total = max(1.0, sum(reference_chars))
    change = (sum(candidate) - sum(live)) / total
    interval = _interval(
        cfg,
        lambda c, v, r, axis=-1: ratio_of_sums(c, r, axis) - ratio_of_sums(v, r, axis),
        candidate,
        live,
        reference_chars,
    )
    passed = change <= cfg.max_cer_increase
    detail = (
        f"CER {sum(live) / total:.3f} -> {sum(candidate) / total:.3f} "
        f"({change:+.3f}{_span(interval)})"
    )
    if not passed:
        detail = f"CER rose: {detail} (more than +{cfg.max_cer_increase})"
    return Check("cer", passed, detail, change, interval, f"<= +{cfg.max_cer_increase}")


def exact_match_check(referenced: Pairs, cfg: GateConfig) -> Check:
    candidate = [float(bool(c.exact)) for c, _ in referenced]
    live = [float(bool(v.exact)) for _, v in referenced]
    change, interval, passed = _mean_change(cfg, candidate, live, cfg.max_exact_match_drop)
    detail = f"exact matches {int(sum(live))} -> {int(sum(candidate))} of {len(referenced)}"
    if not passed:
        detail = f"fewer exact matches: {detail} (share fell more than {cfg.max_exact_match_drop})"
    return Check("exact_match", passed, detail, change, interval, f">= -{cfg.max_exact_match_drop}")


def reference_length_check(candidate: EvalReport, live: EvalReport, cfg: GateConfig) -> list[Check]:
    """Clean answers' length over their references, the candidate's relative to the live's."""
    if candidate.length_ratio is None or not live.length_ratio:
        return []
    relative = candidate.length_ratio / live.length_ratio
    passed = relative >= cfg.min_length_ratio
    detail = (
        f"length ratio {candidate.length_ratio:.2f} of the references vs live "
        f"{live.length_ratio:.2f} ({relative:.2f}"
        + (")" if passed else f" < {cfg.min_length_ratio})")
    )
    if not passed:
        detail = f"answers shortened: {detail}"
    return [Check("reference_length", passed, detail, relative, None, f">= {cfg.min_length_ratio}")]

"""The gate's rules on held-out reports: significance, quality relative to live, refusals;
and the arithmetic of a report (CER, rates) they rest on.

Reports are built answer by answer (the gate's input is plain data); the same rules on
real adapters are in ``test_gate_e2e.py``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loopd.config import GateConfig
from loopd.evaluate import character_error_rate, report_of
from loopd.gate import gate, heldout_too_small
from loopd.stats import discordant_needed, improvement_p_value
from loopd.types import EvalAnswer, EvalReport, Likelihood


def report(
    lengths: list[int],
    loops: set[int],
    *,
    reference: int | None = None,
    cut: set[int] = frozenset(),
) -> EvalReport:
    """One answer per length; ``loops`` degenerated; ``cut`` hit the token limit cleanly."""
    rows = [
        EvalAnswer(
            prompt_id=f"p{i}",
            degenerate=i in loops,
            length=n,
            tokens=n // 4,
            finish_reason="length" if i in loops | cut else "stop",
            edits=None if reference is None else abs(n - reference),
            reference_length=reference,
            text="x" * n,
        )
        for i, n in enumerate(lengths)
    ]
    return report_of("x", rows)


def test_cer_by_hand() -> None:
    # kitten -> sitting: 2 substitutions + 1 insertion = 3 edits over 7 reference chars;
    # "abc" vs "abc": 0 edits over 3; total 3 / 10.
    assert character_error_rate(["kitten", "abc"], ["sitting", "abc"]) == pytest.approx(0.3)
    assert character_error_rate([" a b "], ["a b"]) == 0.0


def test_a_report_adds_up_its_answers() -> None:
    summed = report([100, 50, 300], loops={2}, reference=100)
    assert summed.degeneration_rate == pytest.approx(1 / 3)
    assert summed.cer == pytest.approx((0 + 50 + 200) / 300)
    assert summed.length_ratio == pytest.approx(150 / 200)  # clean answers only
    assert summed.mean_clean_length == 75


def live_and_fixed(prompts: int, loops: int, fixed: int, **kw) -> tuple[EvalReport, EvalReport]:
    """Live loops on the first ``loops`` prompts; the candidate fixes ``fixed`` of them."""
    live = report([400] * loops + [100] * (prompts - loops), set(range(loops)), **kw)
    candidate = report(
        [100] * fixed + [400] * (loops - fixed) + [100] * (prompts - loops),
        set(range(fixed, loops)),
        **kw,
    )
    return live, candidate


def check(decision, name: str):
    return next(c for c in decision.checks if c.name == name)


def test_a_significant_drop_with_quality_held_is_promoted() -> None:
    live, candidate = live_and_fixed(60, loops=20, fixed=15, reference=100)
    decision = gate(candidate, live, GateConfig())
    assert decision.promote, decision.reason
    degeneration = check(decision, "degeneration")
    assert "fixed 15 loops, caused 0" in degeneration.detail
    assert degeneration.estimate == pytest.approx(15 / 60)
    low, high = degeneration.interval
    assert 0 < low < 15 / 60 < high
    assert {c.name for c in decision.checks} >= {"clean_length", "ending", "cer", "exact_match"}


def test_one_prompt_of_many_is_not_significant() -> None:
    """The old gate promoted on any drop: one prompt of 120 flipping."""
    live, candidate = live_and_fixed(120, loops=30, fixed=1)
    decision = gate(candidate, live, GateConfig())
    assert not decision.promote
    assert "fixed 1 loops, caused 0" in decision.reason and "not significant" in decision.reason


def test_more_fixes_than_breaks_is_still_not_enough_when_breaks_are_many() -> None:
    live = report([400] * 10 + [100] * 10, set(range(10)))
    # fixes 6 of live's loops, and starts looping on 4 prompts live answered cleanly
    candidate = report([100] * 6 + [400] * 4 + [400] * 4 + [100] * 6, set(range(6, 14)))
    decision = gate(candidate, live, GateConfig())
    assert not decision.promote and "fixed 6 loops, caused 4" in decision.reason


def test_a_candidate_with_more_loops_is_rejected() -> None:
    live, _ = live_and_fixed(40, loops=5, fixed=0)
    worse = report([400] * 15 + [100] * 25, set(range(15)))
    decision = gate(worse, live, GateConfig())
    assert not decision.promote and "caused 10" in decision.reason
    assert check(decision, "degeneration").estimate < 0


def test_shortening_is_rejected_without_references() -> None:
    live, _ = live_and_fixed(60, loops=20, fixed=20)
    short = report([40] * 60, set())
    decision = gate(short, live, GateConfig())
    assert not decision.promote
    assert "answers shortened: 0.40" in decision.reason
    assert "neither loops on (< 0.9)" in decision.reason
    assert not [c for c in decision.checks if c.name in ("cer", "exact_match")]  # no refs


def test_shortening_is_rejected_with_references_even_when_cer_falls() -> None:
    live = report([400] * 20 + [100] * 40, set(range(20)), reference=100)
    truncator = report([40] * 20 + [85] * 40, set(), reference=100)
    decision = gate(truncator, live, GateConfig(max_cer_increase=10.0))
    assert not decision.promote
    assert check(decision, "cer").passed  # CER alone would have promoted it
    assert "answers shortened: 0.85" in decision.reason


def test_length_is_judged_against_live_not_the_references() -> None:
    """A weak model answers shorter than its references; a candidate like it must pass."""
    live = report([400] * 10 + [86] * 30, set(range(10)), reference=100)  # 0.86 of refs
    candidate = report([86] * 40, set(), reference=100)
    decision = gate(candidate, live, GateConfig(max_cer_increase=0.5))
    assert decision.promote, decision.reason


def test_answers_that_stop_ending_on_their_own_are_rejected() -> None:
    live, _ = live_and_fixed(40, loops=10, fixed=0)
    rambling = report([100] * 40, set(), cut=set(range(10, 25)))  # clean, but cut at the limit
    decision = gate(rambling, live, GateConfig())
    assert not decision.promote and "end on their own changed by -0.500" in decision.reason


def test_forgetting_is_rejected_by_the_likelihood_of_live_answers() -> None:
    live, candidate = live_and_fixed(40, loops=10, fixed=10)
    ids = [f"p{i}" for i in range(10, 40)]
    kept = Likelihood(candidate={i: -0.5 for i in ids}, live={i: -0.4 for i in ids})
    forgot = Likelihood(candidate={i: -1.5 for i in ids}, live={i: -0.4 for i in ids})
    assert gate(candidate, live, GateConfig(), kept).promote
    decision = gate(candidate, live, GateConfig(), forgot)
    assert not decision.promote and "forgetting" in decision.reason
    assert check(decision, "likelihood").estimate == pytest.approx(-1.1)


def test_unmeasured_likelihood_says_so_and_does_not_block() -> None:
    live, candidate = live_and_fixed(40, loops=10, fixed=10)
    decision = gate(candidate, live, GateConfig())
    likelihood = check(decision, "likelihood")
    assert likelihood.passed and likelihood.estimate is None
    assert "cannot score answers" in likelihood.detail


def test_a_held_out_set_too_small_for_significance_is_refused() -> None:
    live, candidate = live_and_fixed(4, loops=4, fixed=4)
    decision = gate(candidate, live, GateConfig(significance=0.05))
    assert not decision.promote
    assert "held-out set too small: 4 prompts" in decision.reason
    assert "at least 5" in decision.reason
    assert heldout_too_small(7, 0.01) is None and heldout_too_small(6, 0.01)


@given(st.integers(0, 40), st.integers(0, 40))
def test_the_p_value_falls_as_fixes_outnumber_breaks(fixed: int, broke: int) -> None:
    p = improvement_p_value(fixed, broke)
    assert 0.0 <= p <= 1.0
    assert improvement_p_value(fixed + 1, broke) <= p


@given(st.floats(1e-6, 0.5))
def test_discordant_needed_is_the_fewest_fixes_that_can_be_significant(alpha: float) -> None:
    needed = discordant_needed(alpha)
    assert improvement_p_value(needed, 0) <= alpha
    assert needed == 1 or improvement_p_value(needed - 1, 0) > alpha

"""The gate: fewer loops by the margin, no CER rise, and no cheap fix by truncation."""

from __future__ import annotations

import pytest

from loopd.config import GateConfig
from loopd.evaluate import character_error_rate, gate, paired_clean_length_ratio, report_of
from loopd.types import EvalAnswer, EvalReport


def answers(lengths: list[int], loops: set[int], *, reference: int | None = None) -> EvalReport:
    """One answer per length; indexes in ``loops`` degenerated; ``reference`` = its length."""
    rows = [
        EvalAnswer(
            prompt_id=f"p{i}",
            degenerate=i in loops,
            length=n,
            tokens=n // 4,
            finish_reason="length" if i in loops else "stop",
            edits=None if reference is None else abs(n - reference),
            reference_length=reference,
        )
        for i, n in enumerate(lengths)
    ]
    return report_of("x", rows)


def test_cer_by_hand() -> None:
    # kitten -> sitting: 2 substitutions + 1 insertion = 3 edits over 7 reference chars;
    # "abc" vs "abc": 0 edits over 3; total 3 / 10.
    assert character_error_rate(["kitten", "abc"], ["sitting", "abc"]) == pytest.approx(0.3)
    assert character_error_rate([" a b "], ["a b"]) == 0.0


def test_the_report_adds_up_its_answers() -> None:
    report = answers([100, 50, 300], loops={2}, reference=100)
    assert report.degeneration_rate == pytest.approx(1 / 3)
    assert report.cer == pytest.approx((0 + 50 + 200) / 300)
    assert report.length_ratio == pytest.approx(150 / 200)  # clean answers only
    assert report.mean_clean_length == 75


def test_promotes_fewer_loops_with_quality_held() -> None:
    live = answers([100, 100, 400, 400], loops={2, 3}, reference=100)
    candidate = answers([100, 100, 100, 400], loops={3}, reference=100)
    decision = gate(candidate, live, GateConfig())
    assert decision.promote, decision.reason


def test_rejects_truncation_even_though_loops_are_gone() -> None:
    live = answers([100, 100, 400, 400], loops={2, 3}, reference=100)
    truncator = answers([100, 100, 20, 20], loops=set(), reference=100)
    decision = gate(truncator, live, GateConfig(max_cer_increase=10.0))
    assert not decision.promote
    assert "answers shortened: length ratio 0.60 of the references vs live 1.00" in decision.reason


def test_length_is_judged_against_live_not_an_absolute_bar() -> None:
    """A weak model answers shorter than its references; a candidate like it must pass."""
    live = answers([86, 86, 400, 400], loops={2, 3}, reference=100)  # ratio 0.86 < 0.9
    candidate = answers([85, 86, 86, 400], loops={3}, reference=100)
    decision = gate(candidate, live, GateConfig(max_cer_increase=0.01))
    assert decision.promote, decision.reason


def test_rejects_a_cer_regression_and_a_too_small_drop() -> None:
    live = answers([100, 100, 400], loops={2}, reference=100)
    candidate = answers([100, 130, 400], loops={2}, reference=100)
    decision = gate(candidate, live, GateConfig(min_degeneration_drop=0.05))
    assert not decision.promote
    assert "CER rose" in decision.reason and "not above the margin" in decision.reason


def test_without_references_length_is_compared_on_the_prompts_neither_loops_on() -> None:
    live = answers([100, 100, 900], loops={2})
    assert paired_clean_length_ratio(answers([40, 40, 10], loops=set()), live) == 0.4
    shortened = gate(answers([40, 40, 10], loops=set()), live, GateConfig())
    assert not shortened.promote and "neither loops on (< 0.9)" in shortened.reason
    assert gate(answers([98, 100, 120], loops=set()), live, GateConfig()).promote

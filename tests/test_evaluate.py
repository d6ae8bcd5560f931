"""The evaluate stage's arithmetic: CER and a report that adds up its answers."""

from __future__ import annotations

import pytest

from loopd.evaluate import character_error_rate, report_of
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

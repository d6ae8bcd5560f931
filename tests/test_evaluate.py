"""The gate: fewer loops by the margin, no CER rise, and no cheap fix by truncation."""

from __future__ import annotations

import pytest

from loopd.config import GateConfig
from loopd.evaluate import character_error_rate, gate
from loopd.types import EvalReport


def report(
    rate: float, cer: float | None, ratio: float | None, clean_len: float = 60.0
) -> EvalReport:
    return EvalReport("x", 100, rate, cer, 80.0, ratio, clean_len)


def test_cer_by_hand() -> None:
    # kitten -> sitting: 2 substitutions + 1 insertion = 3 edits over 7 reference chars;
    # "abc" vs "abc": 0 edits over 3; total 3 / 10.
    assert character_error_rate(["kitten", "abc"], ["sitting", "abc"]) == pytest.approx(0.3)
    assert character_error_rate([" a b "], ["a b"]) == 0.0


def test_promotes_fewer_loops_with_quality_held() -> None:
    decision = gate(report(0.05, 0.10, 1.0), report(0.30, 0.90, 1.0), GateConfig())
    assert decision.promote, decision.reason


def test_rejects_truncation_even_though_loops_are_gone() -> None:
    decision = gate(report(0.0, 0.05, 0.5), report(0.30, 0.90, 1.0), GateConfig())
    assert not decision.promote
    assert "answers shortened" in decision.reason


def test_rejects_a_cer_regression_and_a_too_small_drop() -> None:
    cfg = GateConfig(min_degeneration_drop=0.05)
    decision = gate(report(0.28, 0.95, 1.0), report(0.30, 0.90, 1.0), cfg)
    assert not decision.promote
    assert "CER rose" in decision.reason and "not above the margin" in decision.reason


def test_without_references_length_is_compared_to_the_live_clean_answers() -> None:
    live = report(0.30, None, None, clean_len=100.0)
    assert not gate(report(0.0, None, None, clean_len=40.0), live, GateConfig()).promote
    assert gate(report(0.0, None, None, clean_len=98.0), live, GateConfig()).promote

"""What one config implies for a search: limits per view and per-rule checks, built once."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import NamedTuple

from loopd.detect.config import DetectorConfig
from loopd.detect.counters import LETTER, has_letters
from loopd.detect.runs import Limits, Run, probe_for
from loopd.detect.views import kept

_COUNTER_PERIOD = 400  # longest unit (normalized chars) the counter rule looks for


def per_config(make):
    """Memoize ``make(cfg, *args)`` per config object.

    Keyed by identity (the config is kept alive in the entry so its id is not reused):
    hashing a pydantic model field by field on every call costs more than the search.
    """
    memo: dict[tuple, tuple] = {}

    @wraps(make)
    def get(cfg, *args):
        key = (id(cfg), *args)
        hit = memo.get(key)
        if hit is None or hit[0] is not cfg:
            if len(memo) > 256:
                memo.clear()
            hit = memo[key] = (cfg, make(cfg, *args))
        return hit[1]

    return get


@per_config
def raw_limits(cfg: DetectorConfig) -> Limits:
    """Limits for the raw pass: spans are re-checked in normalized units by raw_accept.

    The raw pass is the fast path for the common loop, one that runs to the token limit,
    so it looks at the very end only; loops followed by a recovery are left to the views.
    """
    return Limits(
        min_repeats=cfg.min_repeats,
        min_span=cfg.min_loop_chars,
        max_period=2 * cfg.max_period_chars,
        max_recovery=0,
        max_recovery_share=cfg.max_recovery_share,
        probe=probe_for(cfg.min_loop_chars, cfg.min_repeats),
    )


@per_config
def _raw_recovery_limits(cfg: DetectorConfig) -> Limits:
    """The raw pass allowing a recovery, used once the near view found a loop."""
    return Limits(
        min_repeats=cfg.min_repeats,
        min_span=cfg.min_loop_chars,
        max_period=2 * cfg.max_period_chars,
        max_recovery=cfg.max_recovery_chars,
        max_recovery_share=cfg.max_recovery_share,
        probe=probe_for(cfg.min_loop_chars, cfg.min_repeats),
    )


@per_config
def _gate_limits(cfg: DetectorConfig) -> Limits:
    """Limits for _counter_gate: the real ones, except 2/3 of the span and one repeat less
    (a counter that changes width, 9 -> 10, breaks the zeroed run), any recovery share,
    and units of at most _COUNTER_PERIOD characters: counted items are list lines."""
    repeats, span = max(2, int(cfg.min_repeats) - 1), 2 * cfg.min_loop_chars // 3
    return Limits(
        repeats,
        span,
        min(cfg.max_period_chars, _COUNTER_PERIOD),
        cfg.max_recovery_chars,
        1.0,
        word_aligned=False,
        probe=probe_for(span, repeats),
    )


@per_config
def _char_limits(cfg: DetectorConfig) -> Limits:
    """Limits for the views; word alignment happens on the text, after mapping back."""
    return Limits(
        min_repeats=cfg.min_repeats,
        min_span=cfg.min_loop_chars,
        max_period=cfg.max_period_chars,
        max_recovery=cfg.max_recovery_chars,
        max_recovery_share=cfg.max_recovery_share,
        word_aligned=False,
        probe=probe_for(cfg.min_loop_chars, cfg.min_repeats),
    )


@per_config
def token_limits(cfg: DetectorConfig) -> Limits:
    return Limits(
        min_repeats=cfg.min_repeats,
        min_span=cfg.min_loop_tokens,
        max_period=cfg.max_period_tokens,
        max_recovery=cfg.max_recovery_tokens,
        max_recovery_share=cfg.max_recovery_share,
        word_aligned=False,
        probe=probe_for(cfg.min_loop_tokens, cfg.min_repeats),
    )


def _symbols_pass(cfg: DetectorConfig, span: float, repeats: float, unbroken: bool) -> bool:
    """Is a loop of a unit without letters long enough? One unbroken string ("!!!!")
    needs min_symbol_run_chars; symbols spread over words or lines ("<!--" lines, "0, 0")
    need many repeats or a long run."""
    if unbroken:
        return span >= cfg.min_symbol_run_chars
    return span >= cfg.min_symbol_loop_chars or repeats >= cfg.min_symbol_repeats


@per_config
def _accept_unit(cfg: DetectorConfig, rule: str):
    """Extra per-rule checks on the repeated unit (letters for symbols and counters)."""

    def accept(s: str, run: Run) -> bool:
        a, b = run.start, run.start + run.period
        if rule == "counter_cycle" and not has_letters(s, a, b, cfg.min_unit_letters):
            return False
        if LETTER.search(s, a, b):
            return True
        unbroken = rule == "cycle" and " " not in s[a : b + 1]
        return _symbols_pass(cfg, run.span, run.repeats, unbroken)

    return accept


class Plan(NamedTuple):
    """Everything one config implies for a search, built once per config (see plan_for)."""

    cfg: DetectorConfig
    chars: Limits
    raw: Limits
    raw_recovery: Limits
    gate: Limits
    tokens: Limits
    relaxed_tokens: Limits
    raw_accept: Callable[[str, Run], bool]
    near_accept: Callable[[str, Run], bool]
    cycle_accept: Callable[[str, Run], bool]
    counter_accept: Callable[[str, Run], bool]


_PLANS: dict[int, Plan] = {}


def plan_for(cfg: DetectorConfig) -> Plan:
    """The limits and checks of ``cfg``: one dict lookup per ``detect`` call instead of a
    memo lookup per stage (together they cost as much as a stage that finds nothing).

    Keyed by identity like per_config; the plan holds the config, so its id stays unique.
    """
    plan = _PLANS.get(id(cfg))
    if plan is None or plan.cfg is not cfg:
        if len(_PLANS) > 256:
            _PLANS.clear()
        plan = _PLANS[id(cfg)] = _make_plan(cfg)
    return plan


def _make_plan(cfg: DetectorConfig) -> Plan:
    return Plan(
        cfg,
        _char_limits(cfg),
        raw_limits(cfg),
        _raw_recovery_limits(cfg),
        _gate_limits(cfg),
        token_limits(cfg),
        relaxed(token_limits(cfg)),
        raw_accept(cfg),
        _accept_unit(cfg, "near_cycle"),
        _accept_unit(cfg, "cycle"),
        _accept_unit(cfg, "counter_cycle"),
    )


@per_config
def raw_accept(cfg: DetectorConfig):
    """Thresholds for an exact run found on the raw text, in normalized characters.

    A raw run is longer than the same run in a view (spaces, punctuation), so its span is
    re-measured from one normalized unit; the letter rule is the exact view's.
    """

    def accept(s: str, run: Run) -> bool:
        unit = s[run.start : run.start + run.period]
        norm = len(kept(unit))  # letters and digits, as in the near view
        if not norm:  # punctuation only: measured as the exact view does
            norm = len(" ".join(("x" + unit + "x").split())) - 2
        span = norm * run.repeats
        if norm > cfg.max_period_chars or span < cfg.min_loop_chars:
            return False
        if LETTER.search(unit):
            return True
        unbroken = not any(c.isspace() for c in unit)
        return _symbols_pass(cfg, span, run.repeats, unbroken)

    return accept


def relaxed(lim: Limits) -> Limits:
    """Limits for *locating* a loop already known to exist (finish_reason=repetition);
    the probe stays that of ``lim``: these limits locate loops, they do not look for
    shorter ones."""
    return Limits(
        2.0, 8, lim.max_period, max(lim.max_recovery, 64), 1.0, lim.word_aligned, lim.probe
    )

"""Cycle search: the periodic run at the tail of a string, at ``memcmp`` speed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

PROBE = 24  # characters/tokens of tail used to propose periods
_MIN_PROBE = 4  # shortest probe: shorter ones recur everywhere
_MAX_PROPOSALS = 16  # previous occurrences of the probe tried per end position
_WORD_START = re.compile(r"\s+(?=\S)")


class Run(NamedTuple):
    """A periodic run ``s[start:end]`` with ``s[i] == s[i + period]`` throughout.

    A named tuple rather than a frozen dataclass: the search makes a few per completion,
    and a frozen dataclass's ``__init__`` costs ~1 µs each.
    """

    start: int
    end: int
    period: int

    @property
    def span(self) -> int:
        return self.end - self.start

    @property
    def repeats(self) -> float:
        return self.span / self.period


@dataclass(frozen=True)
class Limits:
    """The thresholds one search applies, in the units of the string searched."""

    min_repeats: float
    min_span: int
    max_period: int
    max_recovery: int
    max_recovery_share: float
    word_aligned: bool = True
    probe: int = PROBE  # tail characters/tokens that propose periods; see probe_for


def probe_for(min_span: int, min_repeats: float) -> int:
    """The probe for runs this short: PROBE, or less when the shortest passing run is short.

    A run is found when a probe ending in it recurs one period earlier, also in it, so a
    probe must fit in a run of ``min_span`` less one period (at most min_span divided by
    min_repeats): "0audi" four times (20 characters) is never found with 24 characters.
    """
    return max(_MIN_PROBE, min(PROBE, int(min_span * (1 - 1 / min_repeats))))


def align_to_word(s: str, run: Run, on: bool) -> Run:
    """Move a run's start to the next word start (within one period).

    The backward extension also swallows whatever the text before the loop shares with
    the end of the unit ("...on the mat. " before "The cat sat on the mat. ..."); starting
    the loop at a word keeps the reported start readable and a clean place to cut.
    """
    if not on or run.start == 0 or s[run.start - 1].isspace():
        return run
    m = _WORD_START.search(s, run.start, run.start + run.period)
    return run if m is None else Run(m.end(), run.end, run.period)


def _gallop_back(s: str, e: int, p: int, known: int) -> tuple[int, int]:
    """Bounds on the largest L <= e - p with s[e-p-L : e-p] == s[e-L : e] (``known`` holds).

    Doubles the step while the newly added slice still matches (memcmp speed). Returns
    (lo, hi): L is at least lo and below hi; lo == hi when the limit was reached.
    """
    lo, limit, step = known, e - p, max(known, 16)
    while lo < limit:
        hi = min(lo + step, limit)
        if s[e - p - hi : e - p - lo] != s[e - hi : e - lo]:
            return lo, hi
        lo, step = hi, step * 2
    return lo, lo


def _bisect_back(s: str, e: int, p: int, lo: int, hi: int) -> int:
    """The exact L between the bounds _gallop_back found."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if s[e - p - mid : e - p - lo] == s[e - mid : e - lo]:
            lo = mid
        else:
            hi = mid
    return lo


def _gallop_forward(s: str, e: int, p: int) -> tuple[int, int]:
    """Bounds on the largest F <= len(s) - e with s[e : e+F] == s[e-p : e-p+F]."""
    lo, limit, step = 0, len(s) - e, 16
    while lo < limit:
        hi = min(lo + step, limit)
        if s[e + lo : e + hi] != s[e - p + lo : e - p + hi]:
            return lo, hi
        lo, step = hi, step * 2
    return lo, lo


def _bisect_forward(s: str, e: int, p: int, lo: int, hi: int) -> int:
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if s[e + lo : e + mid] == s[e - p + lo : e - p + mid]:
            lo = mid
        else:
            hi = mid
    return lo


def tail_run(
    s: str,
    lim: Limits,
    *,
    accept=None,
    touched: list[Run] | None = None,
    widest: bool = True,
) -> Run | None:
    """The loop at the tail of ``s``: the first run (from the end back) that passes ``lim``.

    1. End positions ``e`` go from ``len(s)`` back over the allowed recovery, spaced so
       that any run of ``min_span`` holds a whole probe ending at one of them: a loop
       followed by a short recovery is still found.
    2. Each earlier occurrence of the probe ``s[e-k:e]`` (found with ``rfind``, nearest
       first) proposes a period ``p``; the run is measured back from ``e`` and forward.
    3. Runs that reach the start of ``s`` are reported in ``touched``: when ``s`` is a
       window on a longer text, such a run may continue before it.
    4. A rejected run is skipped as a whole: occurrences inside it only propose multiples
       of its period, and end positions inside it find it again. This keeps long
       legitimate periodic stretches (a column of zeros) from costing quadratic time.
    5. The first run that passes is widened (_widest) unless ``widest`` is off: a caller
       that only asks whether a loop exists needs no extent.
    """
    n = len(s)
    e = n
    probe_len = lim.probe
    lowest = max(1, n - lim.max_recovery - probe_len)
    # Any run long enough to pass holds a whole probe ending at one of these positions.
    stride = max(probe_len, lim.min_span - probe_len)
    min_span, min_repeats, max_period = lim.min_span, lim.min_repeats, lim.max_period
    while e >= lowest:
        k = probe_len if e >= 2 * probe_len else e // 2
        if k < 1:
            return None
        pos = e - k
        probe = s[pos:e]
        floor = pos - max_period if pos > max_period else 0
        stop = pos - 1 + k  # occurrences must start before pos
        next_e = e - stride
        j = s.rfind(probe, floor, stop)
        tries = _MAX_PROPOSALS
        while j >= 0:  # at most _MAX_PROPOSALS occurrences, nearest first
            p = pos - j
            # Most proposals in clean text fail _gallop_back's first comparison; making it
            # here (and skipping the forward gallop at the very end) saves two calls each.
            hi = k + (k if k > 16 else 16)
            if hi > j:
                back_lo, back_hi = _gallop_back(s, e, p, k)
            elif s[j - hi + k : j] != s[e - hi : pos]:
                back_lo, back_hi = k, hi
            else:
                back_lo, back_hi = _gallop_back(s, e, p, k)
            fwd_lo, fwd_hi = (0, 0) if e == n else _gallop_forward(s, e, p)
            back_most = back_lo if back_hi == back_lo else back_hi - 1
            most = back_most + p + (fwd_lo if fwd_hi == fwd_lo else fwd_hi - 1)
            # <= 1, not 0: a gallop cut short by the start of ``s`` leaves back_most one
            # short of it, and the run may still continue before a window.
            if touched is not None and e - p - back_most <= 1:
                touched.append(Run(0, e + fwd_lo, p))
            if most >= min_span and most >= min_repeats * p:
                run = Run(
                    e - p - _bisect_back(s, e, p, back_lo, back_hi),
                    e + _bisect_forward(s, e, p, fwd_lo, fwd_hi),
                    p,
                )
                aligned = align_to_word(s, run, lim.word_aligned)
                if _passes(s, aligned, lim, accept):
                    return _widest(s, e, k, floor, aligned, lim, accept) if widest else aligned
                start, span = run.start, run.end - run.start
            else:  # too short whatever the exact extent: skip the bisection
                start, span = e - p - back_lo, back_lo + p + fwd_lo
            stop = (j if j < start else start) - 1 + k
            if span >= 2 * p and start < next_e:
                next_e = start
            tries -= 1
            j = s.rfind(probe, floor, stop) if tries else -1
        e = next_e
    return None


def _widest(s: str, e: int, k: int, floor: int, best: Run, lim: Limits, accept) -> Run:
    """Prefer an enclosing loop: a paragraph that repeats, itself holding a repeated line.

    The nearest occurrence gives the smallest period, which in a nested loop is the inner
    one and starts late; a few more occurrences before it can give the outer period,
    whose run starts earlier. The run that starts earliest (by more than a period) wins.
    """
    probe, pos = s[e - k : e], e - k
    stop = best.start - 1 + k
    for _ in range(4):
        j = s.rfind(probe, floor, stop)
        if j < 0:
            break
        p = pos - j
        back_lo, back_hi = _gallop_back(s, e, p, k)
        fwd_lo, fwd_hi = _gallop_forward(s, e, p)
        run = Run(
            e - p - _bisect_back(s, e, p, back_lo, back_hi),
            e + _bisect_forward(s, e, p, fwd_lo, fwd_hi),
            p,
        )
        run = align_to_word(s, run, lim.word_aligned)
        if run.start < best.start - best.period and _passes(s, run, lim, accept):
            best = run
        stop = min(j, run.start) - 1 + k
    return best


def _passes(s: str, run: Run, lim: Limits, accept) -> bool:
    """Does ``run`` meet the limits (and the rule's extra check) as a loop at the tail?"""
    recovery = len(s) - run.end
    return (
        run.repeats >= lim.min_repeats
        and run.span >= lim.min_span
        and recovery <= lim.max_recovery
        and recovery <= lim.max_recovery_share * run.span
        and (accept is None or accept(s, run))
    )

"""The text rules in order: raw text, then views of a tail window."""

from __future__ import annotations

from typing import NamedTuple

from loopd.detect.config import DetectorConfig
from loopd.detect.counters import LETTER
from loopd.detect.items import ItemSet, may_have_item_set, tail_item_set
from loopd.detect.plan import Plan
from loopd.detect.runs import Limits, Run, tail_run
from loopd.detect.views import DIGIT, punctuation_count, view_of, zeroed

_WINDOW_CHARS = 4096  # raw characters viewed first; see search_text


def _symbol_tail(text: str, min_loop_chars: int) -> bool:
    """Could the tail be a loop of punctuation ("!!!!", "12:12:12:"), which the near view
    cannot see? Then at least ~30% of its last characters are punctuation, far more than
    prose (~3%) or code (~20%); counting that is cheaper than building the exact view.
    """
    tail = text[-2 * min_loop_chars :]
    return punctuation_count(tail) >= 0.3 * len(tail)


class Found(NamedTuple):
    """A text rule's run, in the view of ``text[base:]``."""

    rule: str
    run: Run
    view: str | None  # None: the run is on the raw text
    base: int


def _search_views(text: str, plan: Plan, lim: Limits, touched: list[Run]):
    """Run the view rules on ``text``; return (rule, run, view) for the first that fires.

    The near view catches every loop the raw pass left (jitter, a recovery after the
    loop), so clean text (the common case) costs one view. Loops of pure punctuation
    vanish from it, so the exact view runs when the tail is mostly punctuation; numbered
    near-repeats need the counter view, built only when a cheap gate says it may fire.
    """
    cfg = plan.cfg
    near_view = view_of(text, "near_cycle") if cfg.near_repeats or cfg.counters else ""
    symbols = False
    if cfg.near_repeats:
        run = tail_run(near_view, lim, accept=plan.near_accept, touched=touched)
        if run is not None and LETTER.search(near_view, run.start, run.start + run.period):
            return "near_cycle", run, near_view
        # A unit without letters lost its punctuation and spacing here ("0.000000 " five
        # times is "0" thirty-five times): its repeats are counted on the exact view.
        symbols = run is not None
    if not cfg.near_repeats or symbols or _symbol_tail(text, cfg.min_loop_chars):
        view = view_of(text, "cycle")
        run = tail_run(view, lim, accept=plan.cycle_accept, touched=touched)
        if run is not None:
            return "cycle", run, view
    if cfg.counters and _counter_gate(near_view, plan):
        view = view_of(text, "counter_cycle")
        run = tail_run(view, lim, accept=plan.counter_accept, touched=touched)
        if run is not None:
            return "counter_cycle", run, view
    return None


def _counter_gate(near_view: str, plan: Plan) -> bool:
    """Is a counter loop possible? Cheap test before building the counter view.

    With every digit written as "0" (one C translate of the near view), a counter loop is
    periodic wherever its numbers keep their width (10-99, 100-999), so a loose tail search
    there finds it; clean text rarely passes, and then the exact counter view decides.
    """
    lim = plan.gate
    tail = near_view[-(lim.min_repeats + 1) * lim.max_period - lim.max_recovery :]
    if DIGIT.search(tail) is None:
        return False  # no counters
    return tail_run(zeroed(tail), lim, accept=plan.counter_accept, widest=False) is not None


def search_text(text: str, plan: Plan, lim: Limits) -> Found | None:
    """Find the tail loop: on the raw text first, then on views of a window of it.

    1. An exact loop running to the end -- most loops -- is found on the raw text itself:
       no view to build and no offsets to map back.
    2. Otherwise the views are built for the last ``_WINDOW_CHARS`` characters only; the
       whole text is viewed only when a run reaches the window's start, so the loop (or
       its start) may lie before it.
    """
    text = text.rstrip()
    raw = tail_run(text, plan.raw, accept=plan.raw_accept)
    if raw is not None:
        return Found("cycle", raw, None, 0)
    found = _search_windowed(text, plan, lim)
    if found is not None and found.rule == "near_cycle" and found.run.end < len(found.view):
        # Maybe an exact loop followed by a recovery (step 1 only looked at the very end):
        # name and locate it on the raw text.
        raw = tail_run(text, plan.raw_recovery, accept=plan.raw_accept)
        if raw is not None and raw.repeats + 1 >= found.run.repeats:  # the same loop
            return Found("cycle", raw, None, 0)
    return found


def search_tail(text: str, plan: Plan, chars: int) -> Found | None:
    """search_text on the last ``chars`` characters only, offsets into the whole text.

    For loops known to be short (the many-repeats floors): their run and recovery fit in
    a short tail, and searching only that keeps the relaxed pass cheap on clean text.
    """
    stripped = text.rstrip()
    base = max(0, len(stripped) - chars)
    found = search_text(stripped[base:], plan, plan.chars)
    if found is None or base == 0:
        return found
    if found.view is None:  # a run on the raw text: shift the run itself
        run = found.run
        return found._replace(run=Run(run.start + base, run.end + base, run.period))
    return found._replace(base=found.base + base)


def _search_windowed(text: str, plan: Plan, lim: Limits) -> Found | None:
    """The view rules, on the last ``_WINDOW_CHARS`` characters first (see search_text)."""
    if len(text) > _WINDOW_CHARS:
        base = len(text) - _WINDOW_CHARS
        touched: list[Run] = []
        found = _search_views(text[base:], plan, lim, touched)
        if not touched:
            return None if found is None else Found(*found, base)
    found = _search_views(text, plan, lim, [])
    return None if found is None else Found(*found, 0)


def search_items(text: str, cfg: DetectorConfig) -> ItemSet | None:
    """The item-set rule on the tail window, behind its gate (see ``items``).

    Its stretch needs ``min_many_repeats_chars`` of item text, the floor of a loop of
    many repeats: eight or more items from a small set are a loop however short they are
    ("Sun, Moon, Star" cycling in a 48-token answer), as the corpus's labelling rule says.
    """
    window = text.rstrip()[-_WINDOW_CHARS:]
    found = None
    if may_have_item_set(window, cfg.min_item_letters):
        found = tail_item_set(
            window,
            min_items=cfg.min_items,
            max_distinct=cfg.max_distinct_items,
            max_share=cfg.max_distinct_share,
            min_letters=cfg.min_item_letters,
            max_recovery_chars=cfg.max_recovery_chars,
            min_chars=cfg.min_many_repeats_chars,
        )
    if found is None:
        return None
    base = len(text.rstrip()) - len(window)
    return found._replace(start=found.start + base, end=found.end + base)

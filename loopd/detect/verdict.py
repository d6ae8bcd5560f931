"""``detect``: run the rules, turn the first run found into a ``Detection``."""

from __future__ import annotations

import math
from collections.abc import Sequence

from loopd.detect.config import DEFAULT_CONFIG, DetectorConfig
from loopd.detect.counters import LETTER
from loopd.detect.floors import cut_loops, is_many_repeats, relaxed_variants, scaled_for
from loopd.detect.items import ItemSet, may_have_item_set
from loopd.detect.plan import Plan, plan_for, relaxed
from loopd.detect.runs import Run, align_to_word, tail_run
from loopd.detect.search import Found, search_items, search_tail, search_text
from loopd.detect.tokens import token_pass, token_string
from loopd.detect.views import near_view, to_original, zeroed
from loopd.types import CLEAN, Detection

# Raw characters the many-repeats pass searches: its loops cover under min_loop_chars
# (120) normalized characters, plus a recovery of up to max_recovery_chars (300).
_SHORT_LOOP_TAIL = 800


def from_text_run(
    text: str, found: Found, token_ids: Sequence[int] | None, tok: Run | None
) -> Detection:
    """Build the Detection for a text-rule run, mapping offsets back to ``text``."""
    rule, run, base = found.rule, found.run, found.base
    if found.view is None:
        start, end = run.start, run.end
    else:
        src = text.rstrip()[base:]
        start, end = (base + k for k in to_original(src, rule, found.view, (run.start, run.end)))
        per = max(1, round((end - start) / run.repeats))
        start = align_to_word(text, Run(start, end, per), True).start
    start = _line_start(text, start, max(1, round((end - start) / run.repeats)))
    total = max(len(text.rstrip()), 1)
    fraction = min(1.0, max(end - start, 0) / total)
    start_token = None
    if token_ids:
        start_token = min(len(token_ids), round(start / total * len(token_ids)))
        # An exact token cycle where the text loop is (not some shorter cycle at the end)
        # gives the exact token offset; otherwise keep the proportional estimate.
        if tok is not None and abs(tok.start - start_token) <= 0.1 * len(token_ids):
            start_token = tok.start
    return Detection(
        degenerate=True,
        rule=rule,
        score=round(fraction * (1 - 1 / run.repeats), 4),
        loop_start=start,
        loop_start_token=start_token,
        period=max(1, round((end - start) / run.repeats)),
        repeats=round(run.repeats, 2),
        loop_fraction=round(fraction, 4),
    )


def _line_start(text: str, start: int, period: int) -> int:
    """For a loop of whole lines (its unit holds a newline), start at a line's beginning.

    The run may begin inside the line before the loop, where that line ends like the
    unit does ("2. Labrador Retriever" before "3. Golden Retriever", ...): starting at the
    next line keeps the cut clean and stays within one period of the run's start.
    """
    if start == 0 or text[start - 1] == "\n" or text[start + period - 1 : start + period] == "\n":
        return start  # at a line start already, or the unit itself starts here ("Intro. A\n")
    newline = text.find("\n", start, start + period)
    return start if newline < 0 else newline + 1


def from_token_run(text: str, token_ids: Sequence[int], run: Run) -> Detection:
    """Build the Detection for a token-rule run; the character start is estimated."""
    n = max(len(token_ids), 1)
    fraction = min(1.0, run.span / n)
    total = len(text.rstrip())
    return Detection(
        degenerate=True,
        rule="token_cycle",
        score=round(fraction * (1 - 1 / run.repeats), 4),
        loop_start=min(total, round(run.start / n * len(text))),
        loop_start_token=run.start,
        period=run.period,
        repeats=round(run.repeats, 2),
        loop_fraction=round(fraction, 4),
    )


def detect(
    text: str,
    *,
    token_ids: Sequence[int] | None = None,
    finish_reason: str | None = None,
    config: DetectorConfig = DEFAULT_CONFIG,
) -> Detection:
    """Say whether ``text`` ends in a repetition loop and where; see the package docstring.

    Pure and deterministic. ``token_ids`` (the completion's ids) enable the token pass and
    token offsets; ``finish_reason`` in ``config.repetition_finish_reasons`` makes the
    verdict degenerate whatever the text shows. The rules run in order, each only if the
    ones before found nothing: cycles at the config's floors, then (short outputs only)
    at floors scaled to the output, then for many repeats of a short unit, then the
    item-set rule, and last (when the token limit cut the output) cycles of fewer repeats.
    """
    plan = plan_for(config)
    symbols = config.min_symbol_repeats  # a token cycle of symbols, at every floor
    det = _cycles(text, token_ids, plan, symbols)
    if det is not None:
        return det
    scaled = scaled_for(config, text, None if token_ids is None else len(token_ids))
    for relaxed_cfg in relaxed_variants(config, scaled):
        det = _cycles(text, token_ids, plan_for(relaxed_cfg), symbols)
        if det is not None:
            return det
    if config.item_sets:
        found = search_items(text, config)
        if found is not None:
            return _from_item_set(text, token_ids, found)
    if finish_reason in config.limit_finish_reasons:
        for cut in cut_loops(config):
            det = _cycles(text, token_ids, plan_for(cut), symbols)
            if det is not None:
                return det
    if finish_reason in config.repetition_finish_reasons:
        tokens = token_string(token_ids) if token_ids else ""
        return _locate_reported_loop(text, token_ids, tokens, plan)
    return CLEAN


def _cycles(
    text: str, token_ids: Sequence[int] | None, plan: Plan, symbol_repeats: float
) -> Detection | None:
    """The cycle rules: text views first, then (only if they found nothing) token ids.

    A plan whose loops are short (``floors``: many repeats) searches a short tail only,
    and has no token pass. A token cycle without letters needs ``symbol_repeats``, the
    caller's own bar: a token cycle counts its repeats exactly, so the higher bar of the
    relaxed floors (for views, where dropped punctuation can multiply them) is not its.
    """
    cfg = plan.cfg
    if is_many_repeats(cfg):
        if not _may_repeat_often(text.rstrip()[-_SHORT_LOOP_TAIL:], cfg.min_repeats):
            return None  # no short unit recurs at the tail: nothing for these floors
        found = search_tail(text, plan, _SHORT_LOOP_TAIL)
    else:
        found = search_text(text, plan, plan.chars)
    if found is not None:
        tokens = token_string(token_ids) if token_ids else ""
        tok = tail_run(tokens, plan.relaxed_tokens) if tokens else None
        return from_text_run(text, found, token_ids, tok)
    if token_ids and cfg.min_loop_tokens <= len(token_ids):  # a text loop needs no token pass
        run = token_pass(token_ids, plan.tokens)
        if run is not None and _token_unit_passes(text, len(token_ids), run, symbol_repeats):
            return from_token_run(text, token_ids, run)
    return None


def _token_unit_passes(text: str, n_tokens: int, run: Run, symbol_repeats: float) -> bool:
    """A token cycle over text without letters ("1.2.1: " six times, ".000000" four
    times) needs ``symbol_repeats``, as a symbol unit does in the text rules: a few
    repeats of punctuation or digits are a table rule or a number, not yet a loop.

    The ids carry no text, so the run's characters are estimated in proportion; a letter
    anywhere there keeps the plain rule (an estimate off by a little errs towards firing),
    and so does a call with ids alone (no text to look at: the streaming watcher's rule).
    """
    if not text.strip():
        return True
    per_token = len(text) / max(n_tokens, 1)
    start, end = int(run.start * per_token), math.ceil(run.end * per_token) + 1
    return LETTER.search(text, start, end) is not None or run.repeats >= symbol_repeats


def _may_repeat_often(tail: str, repeats: float) -> bool:
    """Gate for the many-repeats floors: the last few letters and digits of the tail
    (counters zeroed) recur ``repeats`` times, or two of its last lines recur."""
    view = zeroed(near_view(tail))
    return view.count(view[-4:]) >= repeats or may_have_item_set(tail, 1)


def _from_item_set(text: str, token_ids: Sequence[int] | None, found: ItemSet) -> Detection:
    """The Detection for an item-set stretch: ``repeats`` is items per distinct item."""
    total = max(len(text.rstrip()), 1)
    fraction = min(1.0, (found.end - found.start) / total)
    repeats = found.items / found.distinct
    start_token = None
    if token_ids:
        start_token = min(len(token_ids), round(found.start / total * len(token_ids)))
    return Detection(
        degenerate=True,
        rule="item_set",
        score=round(fraction * (1 - 1 / repeats), 4),
        loop_start=found.start,
        loop_start_token=start_token,
        period=max(1, round((found.end - found.start) / repeats)),
        repeats=round(repeats, 2),
        loop_fraction=round(fraction, 4),
    )


def _locate_reported_loop(
    text: str, token_ids: Sequence[int] | None, tokens: str, plan: Plan
) -> Detection:
    """The server said it stopped a loop; find it with relaxed limits, or say we could not."""
    found = search_text(text, plan, relaxed(plan.chars))
    if found is not None:
        tok = tail_run(tokens, plan.relaxed_tokens) if tokens else None
        det = from_text_run(text, found, token_ids, tok)
    elif tokens and (run := tail_run(tokens, plan.relaxed_tokens)) is not None:
        det = from_token_run(text, token_ids, run)
    else:
        return Detection(degenerate=True, rule="finish_repetition", score=1.0)
    return Detection(**{**det.__dict__, "rule": "finish_repetition"})

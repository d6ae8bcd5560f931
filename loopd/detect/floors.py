"""Floors for short loops: short answers have short loops, many repeats are a loop, and a
loop the token limit cut short is still one.

Why. The absolute floors (``min_loop_chars`` 120 normalized characters, ``min_loop_tokens``
48) keep "very very very" and three identical short lines from firing in long outputs,
but at the daemon's default ``max_tokens = 48`` a real BPE model's whole answer is about
150 normalized characters: "1. Blue jay 2. Blue jay 3. Blue jay 4. Blue jay" could never
reach them. Two relaxations follow, each only tried when the ones before found nothing:

1. **Scaled** (short outputs): the floors fall to ``short_loop_share`` of the output's
   own length, never below ``min_short_loop_chars`` / ``min_short_loop_tokens``. The
   output's length is the budget its request used: a loop cut by ``max_tokens`` fills it.
2. **Many repeats**: a unit repeated ``many_repeats`` times (``short_loop_repeats`` in
   a short output) needs only ``min_many_repeats_chars``, on the text rules ("N. Ash"
   seven times is a loop in a long list too); a token cycle that short is more often a
   table separator, so the token pass keeps its floor there. Units without letters keep
   their own, higher bar.

And one for outputs the token limit stopped (``cut_loops``): a loop that runs to the very
end needs only ``cut_loop_repeats`` (2.5), since the budget stopped it during its third
repeat, as "| Cucumbers | Asia |" twice and most of a third at ``max_tokens = 128``;
a loop of many repeats likewise needs half a repeat less (3.5: "- **Installation**:"
three times and "- **Install"). With any recovery after it, or an output that stopped by
itself, the full repeats stay the bar. It runs after the item-set rule (see ``verdict``).

How. Each relaxation is just another ``DetectorConfig``: the search, its plan and its
memos stay as they are. Floors are rounded up to a multiple of 8, so a config has a few
dozen variants at most, each built once.
"""

from __future__ import annotations

import math

from loopd.detect.config import DetectorConfig
from loopd.detect.plan import per_config
from loopd.detect.views import near_view

_STEP = 8  # floors are rounded up to this, so the variants (and their plans) stay few
_NO_TOKEN_PASS = 1 << 30  # min_loop_tokens of the many-repeats variant
_SHORT_SYMBOL_REPEATS = 12.0  # relaxed variants: symbol units need more repeats (see above)


def _bucket(value: float) -> int:
    return _STEP * math.ceil(value / _STEP)


def relaxed_variants(
    cfg: DetectorConfig, scaled: DetectorConfig | None
) -> tuple[DetectorConfig, ...]:
    """The relaxed configs to try after ``cfg`` found nothing on an output, in order;
    ``scaled`` is ``scaled_for`` that output (None: it is not short)."""
    if scaled is None:
        return (_many_repeats(cfg, cfg.many_repeats),)
    return (scaled, _many_repeats(cfg, cfg.short_loop_repeats))


def cut_loops(cfg: DetectorConfig) -> tuple[DetectorConfig, ...]:
    """The configs for an output the token limit cut: the config's floors and the
    many-repeats floor, each needing ``min_repeats - cut_loop_repeats`` fewer repeats of
    a loop that runs to the very end (the budget stopped it in its last repeat; with at
    least half of it there, that repeat counts, as the corpus's labelling rule has it).

    Tried last, after the item-set rule: a stretch that began as an item set and ends in
    a short cycle is reported from where the item set began.
    """
    if cfg.cut_loop_repeats >= cfg.min_repeats:
        return ()  # nothing new to find
    return (_cut_loop(cfg), _cut_many_repeats(cfg))


def is_many_repeats(cfg: DetectorConfig) -> bool:
    """Is ``cfg`` a many-repeats variant? Its loops are short: a short tail holds them."""
    return cfg.min_loop_tokens == _NO_TOKEN_PASS


def scaled_for(cfg: DetectorConfig, text: str, n_tokens: int | None) -> DetectorConfig | None:
    """The config with floors scaled to this short output, or None if it is not short.

    Cheap on long outputs (the common case): one length comparison, no view built.
    """
    share = cfg.short_loop_share
    chars, tokens = cfg.min_loop_chars, cfg.min_loop_tokens
    if len(text) * share < 2 * chars:  # maybe short: measure the normalized length
        chars = min(chars, max(cfg.min_short_loop_chars, _bucket(share * len(near_view(text)))))
    if n_tokens is not None and n_tokens * share < tokens:
        tokens = max(cfg.min_short_loop_tokens, _bucket(share * n_tokens))
    if chars < cfg.min_loop_chars or tokens < cfg.min_loop_tokens:
        return _scaled(cfg, chars, tokens)
    return None


@per_config
def _scaled(cfg: DetectorConfig, chars: int, tokens: int) -> DetectorConfig:
    """Lower floors, and no recovery: at these floors a short stretch followed by more
    text is a list that moved on ("Calcium Carbonate" three times, then "5. Fluorite"),
    while a short output's loop runs to its end, where the token budget cut it."""
    return cfg.model_copy(
        update={
            "min_loop_chars": chars,
            "min_loop_tokens": tokens,
            "min_symbol_repeats": max(cfg.min_symbol_repeats, _SHORT_SYMBOL_REPEATS),
            "max_recovery_chars": 0,
            "max_recovery_tokens": 0,
        }
    )


@per_config
def _cut_loop(cfg: DetectorConfig) -> DetectorConfig:
    return cfg.model_copy(
        update={
            "min_repeats": cfg.cut_loop_repeats,
            "max_recovery_chars": 0,
            "max_recovery_tokens": 0,
        }
    )


@per_config
def _cut_many_repeats(cfg: DetectorConfig) -> DetectorConfig:
    allowance = cfg.min_repeats - cfg.cut_loop_repeats
    many = _many_repeats(cfg, cfg.many_repeats)
    return many.model_copy(
        update={
            "min_repeats": many.min_repeats - allowance,
            "max_recovery_chars": 0,
            "max_recovery_tokens": 0,
        }
    )


@per_config
def _many_repeats(cfg: DetectorConfig, repeats: float) -> DetectorConfig:
    """Short units only: a unit longer than min_loop_chars / repeats, so many times over,
    reaches min_loop_chars, where the config's own floors already looked. Short periods
    keep the search (and its short probe) to the last few dozen characters."""
    repeats = max(cfg.min_repeats, repeats)
    return cfg.model_copy(
        update={
            "min_repeats": repeats,
            "max_period_chars": min(cfg.max_period_chars, math.ceil(cfg.min_loop_chars / repeats)),
            "min_loop_chars": min(cfg.min_loop_chars, cfg.min_many_repeats_chars),
            "min_loop_tokens": _NO_TOKEN_PASS,  # the token pass keeps its floor (see above)
            "min_symbol_repeats": max(cfg.min_symbol_repeats, _SHORT_SYMBOL_REPEATS),
        }
    )

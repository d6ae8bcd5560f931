"""Decide whether a completion degenerated into a repetition loop, and where the loop is.

``detect(text, token_ids=..., finish_reason=...)`` returns a ``Detection``; it is a pure
function, cheap enough to run on every completion. ``LoopWatcher`` does the same check
on a stream, token by token, so a proxy can stop a looping generation early.

What counts as a loop. A degenerate output *ends* in a run where one unit repeats back to
back -- to the end of the output, or up to a short "recovery" (the model escaped and
added a line before stopping). The unit can be one token or a whole paragraph. Text that
is merely repetitive (table rows sharing a template, numbered lists, code, logs, a
refrain, licence boilerplate, a few separator lines) has no such run at its tail, or a
run too short to matter, so it never fires.

How (and why it differs from the textbook). The textbook tool is a suffix structure or a
Z-function over the reversed string, both linear but a Python loop per character. We
stay in C instead: take a short *probe* at the tail, find its previous occurrences with
``str.rfind`` (each one proposes a period ``p``), and measure how far the equality
``s[i] == s[i + p]`` extends with galloping slice comparisons: linear in the run length
at ``memcmp`` speed, with a few dozen Python steps per completion. The rules, cheapest
first, each on its own view of the text:

1. ``cycle`` -- the raw text repeats exactly (most loops: no view to build, no offsets to
   map). Loops of bare punctuation ("!!!!", "12:12:12:") are found on a lower-cased,
   whitespace-collapsed view.
2. ``near_cycle`` -- equal once lower-cased with spacing and punctuation dropped (the view
   keeps letters and digits only): jittered repeats, and loops followed by a recovery.
3. ``counter_cycle`` -- equal once list counters are written "0" ("39. Violin",
   "40. Violin", also " 39. " inside a line, and a number closing the line after "-",
   ":", "=" or "#", as in "7. Bluefin-27"): the near-repeat SmolLM2 falls into. Only if
   the unit keeps letters, so a numeric table whose rows differ in numbers stays clean.

With token ids a fourth pass (``token_cycle``) looks for exact token cycles (what vLLM's
own repetition stop sees), and locates loops in token space. A ``repetition`` finish
reason from vLLM is a loop by definition (``finish_repetition``).

Cost. Most completions are clean, so the clean path is kept short: one probe on the raw
text, one view of a 4 kB tail window built by a single ``bytes.translate`` (folding and
dropping in one C pass; ``str.translate`` looks each character up in a dict), a few probes
on it, and a counter gate; the token pass runs only when the text rules found nothing,
converting only the last ~600 ids first. Limits and checks are resolved once per config
(``_plan``), and the counter rule's regexes run behind substring checks and are undone
with prefix sums rather than a Python loop per counter. On the benchmark corpus (short,
highly compressible items: zlib's best case) this is about as fast as computing the gzip
ratio; ``tests/test_detect_fast.py`` holds each shortcut to its plain definition.

Units in the returned ``Detection``: ``loop_start`` is a character offset into ``text``;
``loop_start_token`` a token offset into ``token_ids`` (exact for exact token cycles,
otherwise estimated in proportion to characters); ``period`` is in characters of the
original text (the mean length of one repetition) for every rule except ``token_cycle``,
where it is in tokens; ``repeats`` is the run length over the period, so a loop cut by
the token limit has a fractional count.
"""

from __future__ import annotations

import math
import re
import string
from array import array
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, wraps
from itertools import accumulate, islice
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loopd.types import CLEAN, Detection

__all__ = ["DEFAULT_CONFIG", "DetectorConfig", "LoopWatcher", "detect"]


_WINDOW_CHARS = 4096  # raw characters viewed first; see _search_text
_FULL_CHECK_CHARS = 1024  # LoopWatcher, text pieces: characters between full checks
_COUNTER_PERIOD = 400  # longest unit (normalized chars) the counter rule looks for
_PROBE = 24  # characters/tokens of tail used to propose periods
_MAX_PROPOSALS = 16  # previous occurrences of the probe tried per end position

_DELETE_PUNCT = str.maketrans(dict.fromkeys(string.punctuation + "“”‘’—–…•·«»¡¿"))
# Dropped from the near and counter views: ASCII punctuation, every character str.split()
# treats as whitespace, and common typographic punctuation.
_DROPPED = (
    string.punctuation
    + "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "“”‘’—–…•·«»¡¿"
)
_DROP = str.maketrans(dict.fromkeys(_DROPPED))
# The same deletions and case folding as bytes tables: ``bytes.translate`` runs a plain C
# table loop, 2-3x faster than ``str.translate`` on ASCII text and ~20x faster on text
# with a few non-ASCII characters (where ``str.translate`` looks each character up in a
# dict). Non-ASCII text goes through UTF-8, whose multi-byte sequences never contain
# ASCII bytes, and a regex drops the few non-ASCII characters in _DROPPED.
_ASCII_LOWER = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode())
_ASCII_ZERO = bytes.maketrans(b"123456789", b"000000000")
_ASCII_DROP = "".join(c for c in _DROPPED if c.isascii()).encode()
_ASCII_PUNCT = string.punctuation.encode()
_WIDE_DROP = re.compile("[" + re.escape("".join(c for c in _DROPPED if not c.isascii())) + "]+")
_NONZERO_DIGIT = re.compile("[1-9]")
_INLINE_HINT = bytes.maketrans(b"123456789)\t", b"000000000. ")  # see _may_have_inline_counter
_NON_SPACE = re.compile(r"\S+")
_WORD_START = re.compile(r"\s+(?=\S)")
# List counters: a number (<= 4 digits) leading a line, after list or table markers
# ("39.", "| 39 |", "39,"), or a list marker inside a line (" 39. ", " 39) "). The counter
# view replaces each by a constant ("\n0", " 0"): the markers become spaces in the view
# anyway, and a constant replacement keeps re.sub in C (a group reference does not).
_LINE_COUNTER = re.compile(r"\n[ \t|*#>\-]*\d{1,4}(?!\d)")
_INLINE_COUNTER = re.compile(r"[ \t]\d{1,4}(?=[.)][ \t])")
# A number closing a line after "-", ":", "=" or "#" ("7. Bluefin-27", "...salt: 34"): the
# second counter SmolLM2 keeps incrementing. Replaced by "-0", dropped like the others.
_END_COUNTER = re.compile(r"[-:=#][ \t]?\d{1,4}(?=[ \t\r]*(?:\n|\Z))")
_WORDS_64 = re.compile(r"\s*(?:\S+\s+){64}")
_DIGIT = re.compile(r"[0-9]")
_LETTER = re.compile(r"[^\W\d_]")


class DetectorConfig(BaseModel):
    """Thresholds of the degeneration detector (the daemon's ``[detector]`` section).

    Lengths ending in ``_chars`` count *normalized* characters -- letters and digits;
    spacing and punctuation are not counted -- so jitter does not change them (a unit of
    bare punctuation counts its characters, runs of spaces as one).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_repeats: float = Field(
        3.0,
        description="A loop must repeat its unit at least this many times back to back "
        "(a run cut by the token limit counts its partial last unit).",
    )
    min_loop_chars: int = Field(
        120,
        description="A loop must cover at least this many normalized characters (letters "
        "and digits), so 'very very very' or three short identical lines never fire.",
    )
    min_symbol_loop_chars: int = Field(
        600,
        description="Minimum loop length when the unit has no letters: digits ('0, 0, 0') or "
        "punctuation spread over words or lines ('-----' lines). Higher, because separator "
        "lines and zero-filled rows are legitimate in small amounts. One unbroken run of "
        "punctuation ('!!!!', '12:12:12:') uses min_loop_chars.",
    )
    max_period_chars: int = Field(
        2000,
        description="Longest unit searched for, in normalized characters (~a paragraph "
        "and a half). Longer periods cost more time per completion.",
    )
    max_recovery_chars: int = Field(
        300,
        description="A loop may stop this many normalized characters before the end (the "
        "model escaped and wrote a short ending) and still count.",
    )
    max_recovery_share: float = Field(
        0.5,
        description="...but only if that recovery is shorter than this share of the loop "
        "itself; a long recovery means the model really got out.",
    )
    near_repeats: bool = Field(
        True,
        description="Also catch loops whose repetitions differ only in punctuation, "
        "casing or spacing (rule near_cycle).",
    )
    counters: bool = Field(
        True,
        description="Also catch loops whose repetitions differ only in a list counter (a "
        "number leading a line, ' 39. ' inside one, or one closing it after '-', ':', '=' or "
        "'#'), e.g. '39. Violin' / '40. Violin' or '7. Bluefin-27' / '8. Bluefin-28' "
        "(rule counter_cycle; units up to 400 normalized characters).",
    )
    min_unit_letters: int = Field(
        3,
        description="A counter_cycle unit must keep at least this many letters once the "
        "numbers are dropped, so numeric tables never count as counter loops.",
    )
    min_loop_tokens: int = Field(
        48,
        description="Token pass: an exact token cycle must cover at least this many tokens.",
    )
    max_period_tokens: int = Field(
        512, description="Token pass: longest unit searched for, in tokens."
    )
    max_recovery_tokens: int = Field(
        0,
        description="Token pass: a loop may stop this many tokens before the end and "
        "still count (same share rule as max_recovery_share). 0: the token pass (and the "
        "streaming watcher) look at the very end only; the text rules find loops followed "
        "by a recovery, and a stream that is looping is looping at its end.",
    )
    repetition_finish_reasons: tuple[str, ...] = Field(
        ("repetition",),
        description="Finish reasons that mean the server already stopped a loop (vLLM's "
        "repetition detection); such outputs are degenerate by definition.",
    )
    watch_check_every: int = Field(
        8,
        description="LoopWatcher checks the tail every this many tokens (for text pieces: "
        "exact loops every 4x this many characters, everything every 1,024); a loop is "
        "reported at most this late.",
    )
    watch_window_tokens: int = Field(
        4096,
        description="LoopWatcher keeps this many recent tokens; must hold min_repeats "
        "periods of max_period_tokens plus the recovery.",
    )
    watch_window_chars: int = Field(
        12000,
        description="LoopWatcher keeps this many recent characters when fed text pieces.",
    )

    @field_validator("min_repeats")
    @classmethod
    def _repeats_at_least_two(cls, v: float) -> float:
        if v < 2:
            raise ValueError(
                f"min_repeats={v} would call any repeated phrase a loop; set 2 or more"
            )
        return v

    @field_validator(
        "min_loop_chars",
        "min_symbol_loop_chars",
        "max_period_chars",
        "min_loop_tokens",
        "max_period_tokens",
        "watch_check_every",
        "watch_window_tokens",
        "watch_window_chars",
    )
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"got {v}; set a positive integer")
        return v

    @field_validator("max_recovery_chars", "max_recovery_tokens", "min_unit_letters")
    @classmethod
    def _not_negative(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"got {v}; set 0 or more (0 disables it)")
        return v

    @field_validator("max_recovery_share")
    @classmethod
    def _share(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"got {v}; set a share between 0 and 1")
        return v

    @model_validator(mode="after")
    def _window_holds_a_loop(self) -> DetectorConfig:
        need = (
            math.ceil(self.min_repeats * self.max_period_tokens) + self.max_recovery_tokens + _PROBE
        )
        if self.watch_window_tokens < need:
            raise ValueError(
                f"watch_window_tokens={self.watch_window_tokens} cannot hold a loop of "
                f"max_period_tokens={self.max_period_tokens}; raise it to {need} or lower "
                "max_period_tokens"
            )
        need = (
            math.ceil(self.min_repeats * self.max_period_chars) + self.max_recovery_chars + _PROBE
        )
        if self.watch_window_chars < need:
            raise ValueError(
                f"watch_window_chars={self.watch_window_chars} cannot hold a loop of "
                f"max_period_chars={self.max_period_chars}; raise it to {need} or lower "
                "max_period_chars"
            )
        return self


DEFAULT_CONFIG = DetectorConfig()


class _Run(NamedTuple):
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
class _Limits:
    """The thresholds one search applies, in the units of the string searched."""

    min_repeats: float
    min_span: int
    max_period: int
    max_recovery: int
    max_recovery_share: float
    word_aligned: bool = True


def _align(s: str, run: _Run, on: bool) -> _Run:
    """Move a run's start to the next word start (within one period).

    The backward extension also swallows whatever the text before the loop shares with
    the end of the unit ("...on the mat. " before "The cat sat on the mat. ..."); starting
    the loop at a word keeps the reported start readable and a clean place to cut.
    """
    if not on or run.start == 0 or s[run.start - 1].isspace():
        return run
    m = _WORD_START.search(s, run.start, run.start + run.period)
    return run if m is None else _Run(m.end(), run.end, run.period)


def _per_config(make):
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


# --- the tail search ------------------------------------------------------------------


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


def _tail_run(
    s: str,
    lim: _Limits,
    *,
    accept=None,
    touched: list[_Run] | None = None,
    widest: bool = True,
) -> _Run | None:
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
    lowest = max(1, n - lim.max_recovery - _PROBE)
    # Any run long enough to pass holds a whole probe ending at one of these positions.
    stride = max(_PROBE, lim.min_span - _PROBE)
    min_span, min_repeats, max_period = lim.min_span, lim.min_repeats, lim.max_period
    while e >= lowest:
        k = _PROBE if e >= 2 * _PROBE else e // 2
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
                touched.append(_Run(0, e + fwd_lo, p))
            if most >= min_span and most >= min_repeats * p:
                run = _Run(
                    e - p - _bisect_back(s, e, p, back_lo, back_hi),
                    e + _bisect_forward(s, e, p, fwd_lo, fwd_hi),
                    p,
                )
                aligned = _align(s, run, lim.word_aligned)
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


def _widest(s: str, e: int, k: int, floor: int, best: _Run, lim: _Limits, accept) -> _Run:
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
        run = _Run(
            e - p - _bisect_back(s, e, p, back_lo, back_hi),
            e + _bisect_forward(s, e, p, fwd_lo, fwd_hi),
            p,
        )
        run = _align(s, run, lim.word_aligned)
        if run.start < best.start - best.period and _passes(s, run, lim, accept):
            best = run
        stop = min(j, run.start) - 1 + k
    return best


def _passes(s: str, run: _Run, lim: _Limits, accept) -> bool:
    """Does ``run`` meet the limits (and the rule's extra check) as a loop at the tail?"""
    recovery = len(s) - run.end
    return (
        run.repeats >= lim.min_repeats
        and run.span >= lim.min_span
        and recovery <= lim.max_recovery
        and recovery <= lim.max_recovery_share * run.span
        and (accept is None or accept(s, run))
    )


# --- normalized views of the text -------------------------------------------------------


def _lower(text: str) -> str:
    """Lower-case without changing length, so offsets stay valid."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower()[:1] or c for c in text)


def _kept(low: str) -> str:
    """``low.translate(_DROP)`` (letters, digits and other symbols), through the byte tables."""
    if low.isascii():
        return low.encode("ascii").translate(None, _ASCII_DROP).decode("ascii")
    kept = low.encode("utf-8", "surrogatepass").translate(None, _ASCII_DROP)
    return _WIDE_DROP.sub("", kept.decode("utf-8", "surrogatepass"))


def _kept_bytes(data: bytes) -> bytes:
    """_kept for ASCII text already encoded."""
    return data.translate(None, _ASCII_DROP)


def _near_view(text: str) -> str:
    """``_kept(_lower(text))``; for ASCII text (nearly all) one C pass folds and drops."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_LOWER, _ASCII_DROP).decode("ascii")
    return _kept(_lower(text))


def _zeroed(s: str) -> str:
    """``s`` with the digits 1-9 written as "0" (the counter gate's view)."""
    if s.isascii():
        return s.encode("ascii").translate(_ASCII_ZERO).decode("ascii")
    return _NONZERO_DIGIT.sub("0", s)


def _punctuation(s: str) -> int:
    """How many characters of ``s`` are punctuation (ASCII or typographic)."""
    if s.isascii():
        return len(s) - len(s.encode("ascii").translate(None, _ASCII_PUNCT))
    return len(s) - len(s.translate(_DELETE_PUNCT))


def _view(text: str, rule: str) -> str:
    """The normalized string a rule searches.

    ``near_cycle`` and ``counter_cycle``: lower-cased letters and digits only -- spacing
    and punctuation jitter simply vanish, and one C ``translate`` builds it. ``cycle`` (for
    loops of punctuation, which that view drops): lower-cased words joined by single spaces.
    """
    if rule == "counter_cycle":
        text = _counter_text(text)
    if rule == "cycle":
        return " ".join(_lower(text).split())
    return _near_view(text)


def _to_original(text: str, rule: str, view: str, ks: tuple[int, ...]) -> list[int]:
    """Map offsets ``ks`` (ascending) of ``view == _view(text, rule)`` back into ``text``.

    Only called once a loop is found. In the letters-and-digits views offset ``k`` is the
    ``k``-th kept character of the source (skipped 256 at a time in the regex engine); in
    the word view it is character ``c`` of word ``w``. The counter replacement is undone
    last.
    """
    src = _counter_text(text) if rule == "counter_cycle" else text
    low = _lower(src)
    out = []
    for k in ks:
        if k >= len(view):
            out.append(len(src.rstrip()))
        elif rule == "cycle":
            out.append(_word_offset(low, view, k))
        else:
            out.append(_kept_offset(low, k))
    if rule == "counter_cycle":
        inlined, listed, ended = _counter_parts(text)
        out = [pos + 1 for pos in out]  # offsets into ended ("\n" + ...)
        if ended is not listed:
            out = _unsub(_END_COUNTER, 2, listed, out)
        if listed is not inlined:
            out = _unsub(_INLINE_COUNTER, 2, inlined, out)
        out = [pos - 1 for pos in _undo_line_counters("\n" + text, inlined, out)]
    return [min(pos, len(text)) for pos in out]


def _kept_offset(low: str, k: int) -> int:
    """Offset in ``low`` of its ``k``-th character that the letters-and-digits view keeps.

    Counts kept characters a 1,024-character chunk at a time with ``translate`` (C speed),
    then bisects inside the chunk; a regex stepping over kept characters is ~20x slower.
    ASCII text (nearly all) is encoded once and bisected as bytes.
    """
    if low.isascii():
        data: str | bytes = low.encode("ascii")
        kept: Callable = _kept_bytes
    else:
        data, kept = low, _kept
    at = 0
    while True:
        chunk = data[at : at + 1024]
        if not chunk:
            return len(low)
        count = len(kept(chunk))
        if count > k:
            break
        k, at = k - count, at + 1024
    lo, hi = 0, len(chunk) - 1  # smallest x with more than k kept in chunk[: x + 1]
    while lo < hi:
        mid = (lo + hi) // 2
        if len(kept(chunk[: mid + 1])) > k:
            hi = mid
        else:
            lo = mid + 1
    return at + lo


def _word_offset(low: str, view: str, k: int) -> int:
    """Offset in ``low`` of character ``k`` of its word view (words joined by spaces)."""
    w = view.count(" ", 0, k)
    offset = k - (view.rfind(" ", 0, k) + 1)
    at = 0
    while w >= 64 and (skip := _WORDS_64.match(low, at)) is not None:
        at, w = skip.end(), w - 64
    word = next(islice(_NON_SPACE.finditer(low, at), w, None), None)
    return len(low) if word is None else min(word.start() + offset, word.end())


@_per_config
def _raw_limits(cfg: DetectorConfig) -> _Limits:
    """Limits for the raw pass: spans are re-checked in normalized units by _raw_accept.

    The raw pass is the fast path for the common loop, one that runs to the token limit,
    so it looks at the very end only; loops followed by a recovery are left to the views.
    """
    return _Limits(
        min_repeats=cfg.min_repeats,
        min_span=cfg.min_loop_chars,
        max_period=2 * cfg.max_period_chars,
        max_recovery=0,
        max_recovery_share=cfg.max_recovery_share,
    )


@_per_config
def _raw_recovery_limits(cfg: DetectorConfig) -> _Limits:
    """The raw pass allowing a recovery, used once the near view found a loop."""
    return _Limits(
        min_repeats=cfg.min_repeats,
        min_span=cfg.min_loop_chars,
        max_period=2 * cfg.max_period_chars,
        max_recovery=cfg.max_recovery_chars,
        max_recovery_share=cfg.max_recovery_share,
    )


@_per_config
def _gate_limits(cfg: DetectorConfig) -> _Limits:
    """Limits for _counter_gate: the real ones, except 2/3 of the span (a counter that
    changes width, 9 -> 10, breaks the zeroed run), any recovery share, and units of at
    most _COUNTER_PERIOD characters: counted items are list lines, not paragraphs."""
    return _Limits(
        int(cfg.min_repeats),
        2 * cfg.min_loop_chars // 3,
        min(cfg.max_period_chars, _COUNTER_PERIOD),
        cfg.max_recovery_chars,
        1.0,
        word_aligned=False,
    )


@_per_config
def _char_limits(cfg: DetectorConfig) -> _Limits:
    """Limits for the views; word alignment happens on the text, after mapping back."""
    return _Limits(
        min_repeats=cfg.min_repeats,
        min_span=cfg.min_loop_chars,
        max_period=cfg.max_period_chars,
        max_recovery=cfg.max_recovery_chars,
        max_recovery_share=cfg.max_recovery_share,
        word_aligned=False,
    )


@_per_config
def _token_limits(cfg: DetectorConfig) -> _Limits:
    return _Limits(
        min_repeats=cfg.min_repeats,
        min_span=cfg.min_loop_tokens,
        max_period=cfg.max_period_tokens,
        max_recovery=cfg.max_recovery_tokens,
        max_recovery_share=cfg.max_recovery_share,
        word_aligned=False,
    )


@_per_config
def _accept_unit(cfg: DetectorConfig, rule: str):
    """Extra per-rule checks on the repeated unit (letters for symbols and counters)."""

    def accept(s: str, run: _Run) -> bool:
        a, b = run.start, run.start + run.period
        if rule == "counter_cycle" and not _has_letters(s, a, b, cfg.min_unit_letters):
            return False
        if _LETTER.search(s, a, b) or (rule == "cycle" and " " not in s[a : b + 1]):
            return True  # words, or one unbroken string of symbols ("!!!!")
        return run.span >= cfg.min_symbol_loop_chars

    return accept


class _Plan(NamedTuple):
    """Everything one config implies for a search, built once per config (see _plan)."""

    cfg: DetectorConfig
    chars: _Limits
    raw: _Limits
    raw_recovery: _Limits
    gate: _Limits
    tokens: _Limits
    relaxed_tokens: _Limits
    raw_accept: Callable[[str, _Run], bool]
    near_accept: Callable[[str, _Run], bool]
    cycle_accept: Callable[[str, _Run], bool]
    counter_accept: Callable[[str, _Run], bool]


_PLANS: dict[int, _Plan] = {}


def _plan(cfg: DetectorConfig) -> _Plan:
    """The limits and checks of ``cfg``: one dict lookup per ``detect`` call instead of a
    memo lookup per stage (together they cost as much as a stage that finds nothing).

    Keyed by identity like _per_config; the plan holds the config, so its id stays unique.
    """
    plan = _PLANS.get(id(cfg))
    if plan is None or plan.cfg is not cfg:
        if len(_PLANS) > 256:
            _PLANS.clear()
        plan = _PLANS[id(cfg)] = _make_plan(cfg)
    return plan


def _make_plan(cfg: DetectorConfig) -> _Plan:
    return _Plan(
        cfg,
        _char_limits(cfg),
        _raw_limits(cfg),
        _raw_recovery_limits(cfg),
        _gate_limits(cfg),
        _token_limits(cfg),
        _relaxed(_token_limits(cfg)),
        _raw_accept(cfg),
        _accept_unit(cfg, "near_cycle"),
        _accept_unit(cfg, "cycle"),
        _accept_unit(cfg, "counter_cycle"),
    )


def _has_letters(s: str, start: int, end: int, count: int) -> bool:
    """Does ``s[start:end]`` hold at least ``count`` letters? Stops at the count-th one
    (a unit can be a whole paragraph; counting all its letters costs microseconds)."""
    if count <= 1:
        return count <= 0 or _LETTER.search(s, start, end) is not None
    return next(islice(_LETTER.finditer(s, start, end), count - 1, None), None) is not None


def _counter_text(text: str) -> str:
    """``text`` with every list counter replaced by "0" (see _LINE_COUNTER)."""
    return _counter_parts(text)[2][1:]


@lru_cache(maxsize=8)
def _counter_parts(text: str) -> tuple[str, str, str]:
    """ "\n" + text after each counter substitution in turn (line, inline, end of line):
    built for the view and again when a counter loop's offsets are mapped back, so kept
    for a few texts. The last one, less its "\n", is the counter text."""
    inlined = _LINE_COUNTER.sub("\n0", "\n" + text)
    listed = _INLINE_COUNTER.sub(" 0", inlined) if _may_have_inline_counter(inlined) else inlined
    ended = _END_COUNTER.sub("-0", listed) if _may_have_end_counter(listed) else listed
    return inlined, listed, ended


def _may_have_inline_counter(s: str) -> bool:
    """Can _INLINE_COUNTER match in ``s``? Mostly not, and the regex costs a step at every
    space, while this is one byte translate and four substring searches in C."""
    if not s.isascii():
        return True  # \d also matches non-ASCII digits; let the regex decide
    hint = s.encode("ascii").translate(_INLINE_HINT)
    return b" 0. " in hint or b" 00. " in hint or b" 000. " in hint or b" 0000. " in hint


def _may_have_end_counter(s: str) -> bool:
    """Can _END_COUNTER match in ``s``? Only if a digit closes a line (spaces aside)."""
    if not s.isascii():
        return True  # \d also matches non-ASCII digits; let the regex decide
    hint = s.encode("ascii").translate(_INLINE_HINT, b" \t\r")
    return b"0\n" in hint or hint.endswith(b"0")


def _unsub(pattern: re.Pattern[str], size: int, src: str, positions: list[int]) -> list[int]:
    """Map offsets of ``pattern.sub(<size chars>, src)`` back to offsets of ``src``.

    One ``split`` on the pattern as a group cuts ``src`` into text / match / text / ...
    parts; prefix sums of their lengths, before and after the substitution (matches all
    ``size`` long), place each offset in its part, all in C however many counters there are.
    An offset inside a replacement maps to the same distance into the match it replaced.
    """
    lengths = list(map(len, re.split(f"({pattern.pattern})", src)))
    before = list(accumulate(lengths, initial=0))
    lengths[1::2] = [size] * (len(lengths) // 2)
    after = list(accumulate(lengths, initial=0))
    out = []
    for pos in positions:
        part = bisect_right(after, pos, 0, len(lengths)) - 1
        out.append(before[part] + pos - after[part])
    return out


def _undo_line_counters(src: str, inlined: str, positions: list[int]) -> list[int]:
    """_unsub for _LINE_COUNTER (``inlined == _LINE_COUNTER.sub("\n0", src)``), ~3x faster.

    Both strings hold the same newlines in the same order (a counter starts at one and
    holds no other), so an offset stays on the same line and moves only by what that line's
    counter lost; a plain ``str.split`` finds the line, where _unsub needs a regex split.
    """
    line_ends = list(accumulate(map((1).__add__, map(len, src.split("\n")))))
    out = []
    for pos in positions:
        newline = inlined.rfind("\n", 0, pos + 1)  # the line's newline, in inlined
        at = line_ends[inlined.count("\n", 0, newline)] - 1  # the same newline, in src
        column = pos - newline
        m = _LINE_COUNTER.match(src, at)
        out.append(at + column + (len(m.group()) - 2 if m and column >= 2 else 0))
    return out


def _symbol_tail(text: str, min_loop_chars: int) -> bool:
    """Could the tail be a loop of punctuation ("!!!!", "12:12:12:"), which the near view
    cannot see? Then at least ~30% of its last characters are punctuation, far more than
    prose (~3%) or code (~20%); counting that is cheaper than building the exact view.
    """
    tail = text[-2 * min_loop_chars :]
    return _punctuation(tail) >= 0.3 * len(tail)


class _Found(NamedTuple):
    """A text rule's run, in the view of ``text[base:]``."""

    rule: str
    run: _Run
    view: str | None  # None: the run is on the raw text
    base: int


def _search_views(text: str, plan: _Plan, lim: _Limits, touched: list[_Run]):
    """Run the view rules on ``text``; return (rule, run, view) for the first that fires.

    The near view catches every loop the raw pass left (jitter, a recovery after the
    loop), so clean text (the common case) costs one view. Loops of pure punctuation
    vanish from it, so the exact view runs when the tail is mostly punctuation; numbered
    near-repeats need the counter view, built only when a cheap gate says it may fire.
    """
    cfg = plan.cfg
    near_view = _view(text, "near_cycle") if cfg.near_repeats or cfg.counters else ""
    if cfg.near_repeats:
        run = _tail_run(near_view, lim, accept=plan.near_accept, touched=touched)
        if run is not None:
            return "near_cycle", run, near_view
    if not cfg.near_repeats or _symbol_tail(text, cfg.min_loop_chars):
        view = _view(text, "cycle")
        run = _tail_run(view, lim, accept=plan.cycle_accept, touched=touched)
        if run is not None:
            return "cycle", run, view
    if cfg.counters and _counter_gate(near_view, plan):
        view = _view(text, "counter_cycle")
        run = _tail_run(view, lim, accept=plan.counter_accept, touched=touched)
        if run is not None:
            return "counter_cycle", run, view
    return None


def _counter_gate(near_view: str, plan: _Plan) -> bool:
    """Is a counter loop possible? Cheap test before building the counter view.

    With every digit written as "0" (one C translate of the near view), a counter loop is
    periodic wherever its numbers keep their width (10-99, 100-999), so a loose tail search
    there finds it; clean text rarely passes, and then the exact counter view decides.
    """
    lim = plan.gate
    tail = near_view[-(lim.min_repeats + 1) * lim.max_period - lim.max_recovery :]
    if _DIGIT.search(tail) is None:
        return False  # no counters
    zeroed = _zeroed(tail)
    return _tail_run(zeroed, lim, accept=plan.counter_accept, widest=False) is not None


@_per_config
def _raw_accept(cfg: DetectorConfig):
    """Thresholds for an exact run found on the raw text, in normalized characters.

    A raw run is longer than the same run in a view (spaces, punctuation), so its span is
    re-measured from one normalized unit; the letter rule is the exact view's.
    """

    def accept(s: str, run: _Run) -> bool:
        unit = s[run.start : run.start + run.period]
        norm = len(_kept(unit))  # letters and digits, as in the near view
        if not norm:  # punctuation only: measured as the exact view does
            norm = len(" ".join(("x" + unit + "x").split())) - 2
        span = norm * run.repeats
        if norm > cfg.max_period_chars or span < cfg.min_loop_chars:
            return False
        if _LETTER.search(unit) or not any(c.isspace() for c in unit):
            return True
        return span >= cfg.min_symbol_loop_chars

    return accept


def _search_text(text: str, plan: _Plan, lim: _Limits) -> _Found | None:
    """Find the tail loop: on the raw text first, then on views of a window of it.

    1. An exact loop running to the end -- most loops -- is found on the raw text itself:
       no view to build and no offsets to map back.
    2. Otherwise the views are built for the last ``_WINDOW_CHARS`` characters only; the
       whole text is viewed only when a run reaches the window's start, so the loop (or
       its start) may lie before it.
    """
    text = text.rstrip()
    raw = _tail_run(text, plan.raw, accept=plan.raw_accept)
    if raw is not None:
        return _Found("cycle", raw, None, 0)
    found = _search_windowed(text, plan, lim)
    if found is not None and found.rule == "near_cycle" and found.run.end < len(found.view):
        # Maybe an exact loop followed by a recovery (step 1 only looked at the very end):
        # name and locate it on the raw text.
        raw = _tail_run(text, plan.raw_recovery, accept=plan.raw_accept)
        if raw is not None and raw.repeats + 1 >= found.run.repeats:  # the same loop
            return _Found("cycle", raw, None, 0)
    return found


def _search_windowed(text: str, plan: _Plan, lim: _Limits) -> _Found | None:
    """The view rules, on the last ``_WINDOW_CHARS`` characters first (see _search_text)."""
    if len(text) > _WINDOW_CHARS:
        base = len(text) - _WINDOW_CHARS
        touched: list[_Run] = []
        found = _search_views(text[base:], plan, lim, touched)
        if not touched:
            return None if found is None else _Found(*found, base)
    found = _search_views(text, plan, lim, [])
    return None if found is None else _Found(*found, 0)


def _token_string(token_ids: Sequence[int]) -> str:
    """Token ids as one string (one code point per token) so C string search applies.

    Built through a 32-bit array and a UTF-32 decode (``surrogatepass`` admits ids in
    the surrogate range), ~10x faster than joining ``chr`` of each id.
    """
    try:
        return array("I", token_ids).tobytes().decode("utf-32-le", "surrogatepass")
    except (OverflowError, TypeError, UnicodeDecodeError):  # ids beyond U+10FFFF
        dense: dict[int, int] = {}
        return "".join(chr(dense.setdefault(t, len(dense))) for t in token_ids)


# --- the verdict ------------------------------------------------------------------------


def _from_text_run(
    text: str, found: _Found, token_ids: Sequence[int] | None, tok: _Run | None
) -> Detection:
    """Build the Detection for a text-rule run, mapping offsets back to ``text``."""
    rule, run, base = found.rule, found.run, found.base
    if found.view is None:
        start, end = run.start, run.end
    else:
        src = text.rstrip()[base:]
        start, end = (base + k for k in _to_original(src, rule, found.view, (run.start, run.end)))
        per = max(1, round((end - start) / run.repeats))
        start = _align(text, _Run(start, end, per), True).start
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


def _from_token_run(text: str, token_ids: Sequence[int], run: _Run) -> Detection:
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


def _relaxed(lim: _Limits) -> _Limits:
    """Limits for *locating* a loop already known to exist (finish_reason=repetition)."""
    return _Limits(2.0, 8, lim.max_period, max(lim.max_recovery, 64), 1.0, lim.word_aligned)


def detect(
    text: str,
    *,
    token_ids: Sequence[int] | None = None,
    finish_reason: str | None = None,
    config: DetectorConfig = DEFAULT_CONFIG,
) -> Detection:
    """Say whether ``text`` ends in a repetition loop and where; see the module docstring.

    Pure and deterministic. ``token_ids`` (the completion's ids) enable the token pass and
    token offsets; ``finish_reason`` in ``config.repetition_finish_reasons`` makes the
    verdict degenerate whatever the text shows.
    """
    plan = _plan(config)
    found = _search_text(text, plan, plan.chars)
    if found is not None:
        tokens = _token_string(token_ids) if token_ids else ""
        tok = _tail_run(tokens, plan.relaxed_tokens) if tokens else None
        return _from_text_run(text, found, token_ids, tok)
    if token_ids:  # only now: a loop the text rules found needs no token pass of its own
        run = _token_pass(token_ids, plan.tokens)
        if run is not None:
            return _from_token_run(text, token_ids, run)
    if finish_reason in config.repetition_finish_reasons:
        tokens = _token_string(token_ids) if token_ids else ""
        return _locate_reported_loop(text, token_ids, tokens, plan)
    return CLEAN


def _token_pass(token_ids: Sequence[int], lim: _Limits) -> _Run | None:
    """The token rule's tail search, on the last few hundred ids first.

    Converting ids to a string costs more than searching it, and the search only proposes
    periods from occurrences within ``max_period`` of the end. So the ids it can reach
    are converted first; the whole sequence only when a run found there, or one that
    reaches the window's start, needs its full extent.
    """
    window = lim.max_period + lim.max_recovery + 2 * _PROBE + 1
    if len(token_ids) > 2 * window:
        touched: list[_Run] = []
        tail = _token_string(token_ids[-window:])
        if _tail_run(tail, lim, touched=touched) is None and not touched:
            return None
    return _tail_run(_token_string(token_ids), lim)


def _locate_reported_loop(
    text: str, token_ids: Sequence[int] | None, tokens: str, plan: _Plan
) -> Detection:
    """The server said it stopped a loop; find it with relaxed limits, or say we could not."""
    found = _search_text(text, plan, _relaxed(plan.chars))
    if found is not None:
        tok = _tail_run(tokens, plan.relaxed_tokens) if tokens else None
        det = _from_text_run(text, found, token_ids, tok)
    elif tokens and (run := _tail_run(tokens, plan.relaxed_tokens)) is not None:
        det = _from_token_run(text, token_ids, run)
    else:
        return Detection(degenerate=True, rule="finish_repetition", score=1.0)
    return Detection(**{**det.__dict__, "rule": "finish_repetition"})


# --- streaming --------------------------------------------------------------------------


class LoopWatcher:
    """Watch a stream as it is generated and report a loop as soon as it is established.

    Feed token ids (``int``) or decoded text pieces (``str``), one stream per watcher,
    not mixed. Every ``config.watch_check_every`` tokens the watcher runs the batch
    detector's token search on a bounded window of the stream, so the work per token is
    amortized constant and its verdict is the batch detector's on the stream so far. Text
    pieces get the batch detector's first stage (exact loops on the raw text) every 4x
    that many characters and the whole detector every ``_FULL_CHECK_CHARS`` characters,
    which keeps the cost near 2 µs per token. Once a loop is found the watcher latches:
    ``feed`` keeps returning that ``Detection``, with offsets counted from the start of
    the stream. Call ``finish()`` at the end of the stream to check the last pieces.

        watcher = LoopWatcher(cfg.detector)
        for token in stream:
            if watcher.feed(token):
                break  # stop generating
    """

    def __init__(self, config: DetectorConfig = DEFAULT_CONFIG) -> None:
        self.config = config
        self._every = config.watch_check_every
        self._pending: list[str] = []
        self._since = 0
        self._buf = ""
        self._dropped = 0
        self._text = False
        self._since_full = 0
        self.detection: Detection | None = None

    def feed(self, piece: int | str) -> Detection | None:
        """Add one token id or text piece; return the Detection once a loop is established."""
        if self.detection is not None:
            return self.detection
        if type(piece) is int:  # one character per id (ids past Unicode's range wrap)
            self._pending.append(chr(piece % 0x110000))
            self._since += 1
        else:
            self._text = True
            self._pending.append(piece)
            self._since += len(piece)
            self._since_full += len(piece)
            if self._since < 4 * self._every:
                return None
        if self._since >= self._every:
            return self._check()
        return None

    def finish(self) -> Detection | None:
        """Check whatever arrived since the last check (call once the stream ends)."""
        if self.detection is None and (self._pending or self._since_full):
            return self._check(full=True)
        return self.detection

    @property
    def consumed(self) -> int:
        """Tokens (or characters, for text pieces) seen so far, checked or not."""
        return self._dropped + len(self._buf) + sum(map(len, self._pending))

    def _check(self, full: bool = False) -> Detection | None:
        """Append the pending pieces to the window and run the tail search once."""
        cfg = self.config
        window = cfg.watch_window_chars if self._text else cfg.watch_window_tokens
        buf = self._buf + "".join(self._pending)
        self._pending.clear()
        self._since = 0
        if len(buf) > window:
            self._dropped += len(buf) - window
            buf = buf[-window:]
        self._buf = buf
        if self._text:
            det = self._text_check(buf, full)
        else:
            run = _tail_run(buf, _token_limits(self.config))
            det = None if run is None else _from_token_run("", [0] * len(buf), run)
        if det is None or not det.degenerate:
            return None
        self.detection = self._shift(det)
        return self.detection

    def _text_check(self, buf: str, full: bool) -> Detection | None:
        """The raw-text stage of the batch detector, or (now and then) all of it."""
        if full or self._since_full >= _FULL_CHECK_CHARS:
            self._since_full = 0
            return detect(buf, config=self.config)
        text = buf.rstrip()
        run = _tail_run(text, _raw_limits(self.config), accept=_raw_accept(self.config))
        return (
            None if run is None else _from_text_run(buf, _Found("cycle", run, None, 0), None, None)
        )

    def _shift(self, det: Detection) -> Detection:
        """Make window offsets absolute (from the start of the stream)."""
        if self._text:
            start = None if det.loop_start is None else det.loop_start + self._dropped
            return Detection(**{**det.__dict__, "loop_start": start})
        start_token = det.loop_start_token + self._dropped
        return Detection(**{**det.__dict__, "loop_start": None, "loop_start_token": start_token})

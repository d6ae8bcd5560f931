"""List counters: the numbers SmolLM2 keeps incrementing in a loop, written as "0"."""

from __future__ import annotations

import re
from bisect import bisect_right
from functools import lru_cache
from itertools import accumulate, islice

_INLINE_HINT = bytes.maketrans(b"123456789)\t", b"000000000. ")  # see may_have_inline_counter
# List counters: a number (<= 4 digits, or dotted ones: "4.5.") leading a line, after list
# or table markers ("39.", "| 39 |", "39,", "4.6."), or a list marker inside a line
# (" 39. ", " 39) "). The counter view replaces each by a constant ("\n0", " 0"): the
# markers become spaces in the view anyway, and a constant replacement keeps re.sub in C
# (a group reference does not).
LINE_COUNTER = re.compile(r"\n[ \t|*#>\-]*\d{1,4}(?:\.\d{1,4})*(?!\d)")
INLINE_COUNTER = re.compile(r"[ \t]\d{1,4}(?=[.)][ \t])")
# A number closing a line after "-", ":", "=" or "#" ("7. Bluefin-27", "...salt: 34"): the
# second counter SmolLM2 keeps incrementing. Replaced by "-0", dropped like the others.
END_COUNTER = re.compile(r"[-:=#][ \t]?\d{1,4}(?=[ \t\r]*(?:\n|\Z))")
LETTER = re.compile(r"[^\W\d_]")


def has_letters(s: str, start: int, end: int, count: int) -> bool:
    """Does ``s[start:end]`` hold at least ``count`` letters? Stops at the count-th one
    (a unit can be a whole paragraph; counting all its letters costs microseconds)."""
    if count <= 1:
        return count <= 0 or LETTER.search(s, start, end) is not None
    return next(islice(LETTER.finditer(s, start, end), count - 1, None), None) is not None


def counter_text(text: str) -> str:
    """``text`` with every list counter replaced by "0" (see LINE_COUNTER)."""
    return counter_parts(text)[2][1:]


@lru_cache(maxsize=8)
def counter_parts(text: str) -> tuple[str, str, str]:
    """ "\n" + text after each counter substitution in turn (line, inline, end of line):
    built for the view and again when a counter loop's offsets are mapped back, so kept
    for a few texts. The last one, less its "\n", is the counter text."""
    inlined = LINE_COUNTER.sub("\n0", "\n" + text)
    listed = INLINE_COUNTER.sub(" 0", inlined) if may_have_inline_counter(inlined) else inlined
    ended = END_COUNTER.sub("-0", listed) if may_have_end_counter(listed) else listed
    return inlined, listed, ended


def may_have_inline_counter(s: str) -> bool:
    """Can INLINE_COUNTER match in ``s``? Mostly not, and the regex costs a step at every
    space, while this is one byte translate and four substring searches in C."""
    if not s.isascii():
        return True  # \d also matches non-ASCII digits; let the regex decide
    hint = s.encode("ascii").translate(_INLINE_HINT)
    return b" 0. " in hint or b" 00. " in hint or b" 000. " in hint or b" 0000. " in hint


def may_have_end_counter(s: str) -> bool:
    """Can END_COUNTER match in ``s``? Only if a digit closes a line (spaces aside)."""
    if not s.isascii():
        return True  # \d also matches non-ASCII digits; let the regex decide
    hint = s.encode("ascii").translate(_INLINE_HINT, b" \t\r")
    return b"0\n" in hint or hint.endswith(b"0")


def unsub(pattern: re.Pattern[str], size: int, src: str, positions: list[int]) -> list[int]:
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


def undo_line_counters(src: str, inlined: str, positions: list[int]) -> list[int]:
    """unsub for LINE_COUNTER (``inlined == LINE_COUNTER.sub("\n0", src)``), ~3x faster.

    Both strings hold the same newlines in the same order (a counter starts at one and
    holds no other), so an offset stays on the same line and moves only by what that line's
    counter lost; a plain ``str.split`` finds the line, where unsub needs a regex split.
    """
    line_ends = list(accumulate(map((1).__add__, map(len, src.split("\n")))))
    out = []
    for pos in positions:
        newline = inlined.rfind("\n", 0, pos + 1)  # the line's newline, in inlined
        at = line_ends[inlined.count("\n", 0, newline)] - 1  # the same newline, in src
        column = pos - newline
        m = LINE_COUNTER.match(src, at)
        out.append(at + column + (len(m.group()) - 2 if m and column >= 2 else 0))
    return out

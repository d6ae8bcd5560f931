"""The item-set rule: a tail that keeps drawing from a few items, in any order.

Why a rule of its own. Real small models loop without a period: "Austria, Germany,
Austria, Austria, Germany, ...", six countries cycling with one swapped now and then,
"Cello / Violin / Acoustic Guitar" in shifting order for forty lines. No two stretches
repeat exactly, so the cycle search (``runs``) cannot see them, yet the tail is as dead
as any loop: its *diversity* collapsed. So this rule cuts the tail into items (lines,
sentences, comma-separated entries, numbered entries) and asks how many distinct items
the last ones are.

What keeps it off legitimate text. The thresholds are about the *set*, not the lines:
at least ``min_items`` items, drawn from at most ``max_distinct_items`` distinct ones,
and no more distinct items than ``max_distinct_share`` of the items (each seen about
four times on average). Tables, logs, code and enumerations repeat a *template*, but
their items differ in a name, a timestamp or a value, so their items stay distinct;
only list counters are dropped before comparing ("39. Violin" is "Violin"). Items with
fewer than ``min_item_letters`` letters ("}", "0,0", "---") are not items at all: zero
rows, separators and closing braces repeat legitimately (the symbol loops they can
form are the cycle rules' job).

Cost. Most completions are clean and must not pay for a split: a gate takes the last
few items (a split of the last few hundred characters) and counts each in the window
(``str.count``, C speed); only when one recurs there does the full split run.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from loopd.detect.counters import has_letters
from loopd.detect.views import zeroed

# Item boundaries: a newline; a comma or semicolon before a space; a sentence end before a
# capital or a quote; a list counter inside a line (" 57. Shih Tzus 58. Greyhound").
_SEPARATOR = re.compile(r"(?<=[,;])\s+|(?<=[.!?])\s+(?=[A-Z\"'*])|\s+(?=\d{1,4}[.)]\s)")
_INLINE_HINTS = re.compile(r"[,;.!?)]\s")
# What does not tell items apart: list markers and counters before (numbers, dotted
# numbers, or one letter: "E,Electrical,1985"), punctuation after.
_MARKERS = " \t\r-*•|#>"
_LEAD_COUNTER = re.compile(r"\d{1,4}(?:\.\d{1,4})*[.):]?\s+")
_LETTER_COUNTER_ENDS = ".),:"
_TRAIL_CHARS = " \t\r.,;:!?|*"
_DIGITS = re.compile(r"\d+")
_PLAIN = re.compile(r"[\w\s|,.:;()%/\"*-]+")  # words, numbers and table cells only
_GATE_ITEMS = 6  # last items with letters the gate looks at (a closing remark's first)
_GATE_CHARS = 600  # characters split for the gate
_CHUNK = 1536  # characters cut into items first (see tail_item_set)
_GATE_TRIM = " \t\r0123456789.,;:!?|*#>•-()"  # counters and punctuation around an item


class ItemSet(NamedTuple):
    """A tail stretch of ``items`` items drawn from ``distinct`` ones, from ``start``."""

    start: int
    end: int
    items: int
    distinct: int


def _key(item: str) -> str:
    """An item as compared: no counter, no trailing punctuation, case and spacing folded."""
    item = item.lstrip(_MARKERS)
    if item[:1].isdigit():
        item = _LEAD_COUNTER.sub("", item, count=1)
    elif item[1:2] in _LETTER_COUNTER_ENDS and item[:1].isalpha():
        item = item[2:]
    return " ".join(item.rstrip(_TRAIL_CHARS).lower().split())


def _items(text: str) -> list[tuple[int, int, str]]:
    """(start, end, key) of every item of ``text``: lines, split further inside a line
    only where it holds a separator (most lines of code and tables do not)."""
    out = []
    at = 0
    for line in text.split("\n"):
        end = at + len(line)
        if _INLINE_HINTS.search(line) is None:
            if line:
                out.append((at, end, _key(line)))
        else:
            start = 0
            for sep in _SEPARATOR.finditer(line):
                if sep.start() > start:
                    out.append((at + start, at + sep.start(), _key(line[start : sep.start()])))
                start = sep.end()
            if start < len(line):
                out.append((at + start, end, _key(line[start:])))
        at = end + 1
    return out


def may_have_item_set(window: str, min_letters: int) -> bool:
    """Gate: do two of the last few items each occur at least twice more in ``window``?

    All in C: lines (or the last line's comma-separated parts) trimmed of counters and
    punctuation with ``str.strip``, counted with ``str.count``. Looks past a closing
    remark: the last ``_GATE_ITEMS`` items with letters.
    """
    tail = window[-_GATE_CHARS:]
    lines = tail.split("\n")
    pieces = lines[-1].split(", ") + lines[-2::-1] if ", " in lines[-1] else lines[::-1]
    checked = recurring = 0
    for piece in pieces:
        # Trimming digits too leaves the words of a row whose numbers count or drift
        # ("| 35 | China | 350 |" -> "China"), so the digit-blind pass gets through:
        core = piece.strip(_GATE_TRIM)
        if core[1:2] in _LETTER_COUNTER_ENDS and core[:1].isalpha():  # "E,Electrical"
            core = core[2:].strip(_GATE_TRIM)
        digit = _DIGITS.search(core)
        if digit is not None:  # and the words before a number inside it ("Caravaggio | 1618")
            core = core[: digit.start()].strip(_GATE_TRIM) or core
        if len(core) < min_letters or core.lower() == core.upper():  # no letters
            continue
        recurring += window.count(core) >= 3
        checked += 1
        if recurring == 2:
            return True
        if checked == _GATE_ITEMS:
            return False
    return False


def _blind_ok(key: str) -> bool:
    """May this item be compared digit-blind? Words and table cells with at most two
    numbers: a row's value or year, not a log line's timestamp (six numbers)."""
    return _PLAIN.fullmatch(key) is not None and len(_DIGITS.findall(key)) <= 2


class _Limits(NamedTuple):
    min_items: int
    max_distinct: int
    max_share: float
    min_chars: int
    max_recovery_chars: int


def tail_item_set(
    text: str,
    *,
    min_items: int,
    max_distinct: int,
    max_share: float,
    min_letters: int,
    max_recovery_chars: int,
    min_chars: int,
) -> ItemSet | None:
    """The longest tail stretch that draws its items from a small set, if there is one.

    Walks back from the end (after a closing remark of at most ``max_recovery_chars``,
    shorter than the stretch), adding items to a set until more than ``max_distinct``
    distinct ones are seen; the best stretch is the longest whose distinct count stays
    within ``max_share`` of its length and whose items hold at least ``min_chars``
    characters. Items are cut from the last ``_CHUNK`` characters first; the whole text
    only when a walk ran out of items there (the stretch may go on before).

    Then the same, digit-blind and stricter: the same one or two rows with a number
    counting or drifting in them ("| 35 | China | 350 |", "| Caravaggio | 1618 |").
    Stricter because logs are rows of a few messages, and only for words and table cells
    with at most two numbers: timestamps and code ("'\\x01'  # 0x01") count legitimately.
    """
    plain = _Limits(min_items, max_distinct, max_share, min_chars, max_recovery_chars)
    blind = plain._replace(max_distinct=max(1, max_distinct // 2), max_share=max_share / 2)
    base = max(0, len(text) - _CHUNK)
    while True:
        items = [
            (base + a, base + b, key)
            for a, b, key in _items(text[base:])
            if has_letters(key, 0, len(key), min_letters)
        ]
        found, more = _after_recovery(items, len(text), plain)
        if found is None:
            zeroed_items = [(a, b, zeroed(key)) for a, b, key in items if _blind_ok(key)]
            found, more_blind = _after_recovery(zeroed_items, len(text), blind)
            more = more or more_blind
        if (found is not None and found.start > items[0][0]) or not more or base == 0:
            return found
        base = 0


def _after_recovery(
    items: list[tuple[int, int, str]], end_of_text: int, lim: _Limits
) -> tuple[ItemSet | None, bool]:
    """_stretch ending at each of the last items that leaves a short enough recovery;
    and whether some walk ran out of items (so an earlier start might do better)."""
    ran_out = False
    for skip in range(len(items)):
        recovery = end_of_text - items[-1 - skip][1]
        if recovery > lim.max_recovery_chars:
            break
        found, out = _stretch(items[: len(items) - skip], lim)
        ran_out = ran_out or out
        if found is not None and found.end - found.start > recovery:
            return found, ran_out
    return None, ran_out


def _stretch(items: list[tuple[int, int, str]], lim: _Limits) -> tuple[ItemSet | None, bool]:
    """The longest stretch ending at the last of ``items`` that passes (see above), and
    whether the walk ran out of items before it saw too many distinct ones."""
    best: ItemSet | None = None
    seen: set[str] = set()
    chars = 0
    for n, (start, _, key) in enumerate(reversed(items), 1):
        seen.add(key)
        chars += len(key)
        if len(seen) > lim.max_distinct:
            return best, False
        if n >= lim.min_items and len(seen) <= lim.max_share * n and chars >= lim.min_chars:
            best = ItemSet(start, items[-1][1], n, len(seen))
    return best, True

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
and no more distinct items than ``max_distinct_share`` of the items (each seen three
to four times on average, as the real-output corpus's labelling rule has it). Tables,
logs, code and enumerations repeat a *template*, but their items differ in a name, a
timestamp or a value, so their items stay distinct; only list counters are dropped
before comparing ("39. Violin" is "Violin"). Items with fewer than
``min_item_letters`` letters ("}", "0,0", "---") are not items at all: zero rows,
separators and closing braces repeat legitimately (the symbol loops they can form are
the cycle rules' job).

Cost. Most completions are clean and must not pay for a split: a gate takes the last
few items (a split of the last few hundred characters) and counts each in the window
(``str.count``, C speed); only when one recurs there does the rule cut items, from the
end backwards and only as far as its walks reach (on clean text, a few lines).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator
from typing import NamedTuple

from loopd.detect.counters import has_letters

# Item boundaries: a newline; a comma or semicolon before a space; a sentence end before a
# capital or a quote; a list counter inside a line (" 57. Shih Tzus 58. Greyhound").
# The regex starts with a character class, so the engine skips to candidate characters
# in C; the separator itself is group 1 or 2 (after "," ";" or a sentence end) or, before
# a counter, the whole match. Possessive: no backtracking through indentation.
_SEPARATOR = re.compile(
    r"[,;.!?\s](?:(?<=[,;])(\s++)|(?<=[.!?])(\s++)(?=[A-Z\"'*])|(?<=\s)\s*+(?=\d{1,4}[.)]\s))"
)
_INLINE_HINTS = re.compile(r"[,;.!?)]\s")
# What does not tell items apart: list markers and counters before (numbers, dotted
# numbers, or one letter: "E,Electrical,1985"), punctuation after.
_MARKERS = " \t\r-*•|#>"
_LEAD_COUNTER = re.compile(r"\d{1,4}(?:\.\d{1,4})*[.):]?\s+")
_LETTER_COUNTER_ENDS = ".),:"
_TRAIL_CHARS = " \t\r.,;:!?|*"
_DIGITS = re.compile(r"\d+")
_DECIMAL = re.compile(r"\d[.,]\d")  # "0.52", "3,5": a measurement, not a drifting value
_MAX_BLIND_NUMBERS = 3  # more numbers than this: a timestamp, not a drifting value
_LABEL = re.compile(r"^[^:]{1,40}:\s")  # a list entry's name: "ruby: " in "ruby: a red gem"
_PLAIN = re.compile(r"[\w\s|,.:;()%/\"'’*-]+")  # words, numbers and table cells only
_GATE_ITEMS = 6  # last items with letters the gate looks at (a closing remark's first)
_GATE_CHARS = 600  # characters split for the gate
_ASCII_LOWER = string.ascii_lowercase.encode("ascii")
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


def _line_items(line: str, at: int) -> list[tuple[int, int, str]]:
    """(start, end, key) of the items of one line starting at offset ``at``: the line,
    split further only where it holds a separator (most lines of code and tables do not)."""
    if _INLINE_HINTS.search(line) is None:
        return [(at, at + len(line), _key(line))] if line else []
    out = []
    start = 0
    for match in _SEPARATOR.finditer(line):
        sep_start, sep_end = match.span(match.lastindex or 0)
        if sep_start > start:
            out.append((at + start, at + sep_start, _key(line[start:sep_start])))
        start = sep_end
    if start < len(line):
        out.append((at + start, at + len(line), _key(line[start:])))
    return out


_Item = tuple[int, int, str, str, str]  # start, end, key, blind key, unlabelled key


class _TailItems:
    """The items of ``text`` with enough letters, cut from the end backwards on demand.

    Every walk starts near the end and, on clean text, stops after a few distinct items:
    cutting lines only as walks reach them keeps the rule's cost to those few lines. Each
    item is an ``_Item`` (see ``_compared``); every pass walks the same items, cut once.
    """

    def __init__(self, text: str, min_letters: int) -> None:
        self._text, self._min_letters = text, min_letters
        self._cursor = len(text)  # text[: cursor] is not cut yet; -1: all of it is
        self.last_first: list[_Item] = []
        # Whether any item cut so far has a blind (or unlabelled) key other than its key:
        # if none has, that pass would walk the plain keys again (see tail_item_set).
        self.blinded = self.labelled = False

    def get(self, i: int) -> _Item | None:
        """The ``i``-th item from the end (0: the last), or None if there are fewer."""
        while len(self.last_first) <= i and self._cursor >= 0:
            self._cut_line()
        return self.last_first[i] if i < len(self.last_first) else None

    def walk(self, i: int) -> Iterator[_Item]:
        """The items from the ``i``-th from the end backwards, cut as the walk reaches them."""
        items = self.last_first
        while True:
            while i < len(items):
                yield items[i]
                i += 1
            if self._cursor < 0:
                return
            self._cut_line()

    def _cut_line(self) -> None:
        newline = self._text.rfind("\n", 0, self._cursor)
        line = self._text[newline + 1 : self._cursor]
        self._cursor = newline
        for a, b, key in reversed(_line_items(line, newline + 1)):
            if _has_letters(key, self._min_letters):
                item = _compared(a, b, key)
                self.blinded = self.blinded or item[_BLIND_KEY] != key
                self.labelled = self.labelled or item[_UNLABELLED_KEY] != key
                self.last_first.append(item)


def _compared(start: int, end: int, key: str) -> _Item:
    """An item with the keys the three passes compare (see tail_item_set): the key; the
    blind key, each number written "0" when the item may be compared digit-blind (else
    the key: a log line's timestamp still tells it apart); the key less a leading label
    ("ruby: " in "ruby: a red gemstone")."""
    return start, end, key, _blind_key(key), _LABEL.sub("", key, count=1) if ":" in key else key


def _has_letters(key: str, count: int) -> bool:
    """Does the (lower-cased) key hold ``count`` letters? ASCII keys count them in C."""
    if key.isascii():
        return len(key) - len(key.encode("ascii").translate(None, _ASCII_LOWER)) >= count
    return has_letters(key, 0, len(key), count)


def may_have_item_set(window: str, min_letters: int) -> bool:
    """Gate: do two of the last few items each occur at least twice more in ``window``?

    All in C: lines and their comma-separated parts (a list may be written on one line:
    "13. The Last Rage: A deck of cards, such as ..., 14. ..."), trimmed of counters and
    punctuation with ``str.strip``, counted with ``str.count``. Looks past a closing
    remark: the last ``_GATE_ITEMS`` items with letters.
    """
    tail = window[-_GATE_CHARS:]
    lines = tail.split("\n")
    pieces = (part for line in reversed(lines) for part in reversed(line.split(", ")))
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


def _blind_key(key: str) -> str:
    """The key with each number written "0", if the item may be compared digit-blind
    (else the key): words and table cells with at most three numbers (a row's value or
    year; "Intel Core i5 23: ... 23 GB"), not a log line's timestamp (six numbers) and
    no decimal: "loss 0.52" is a measurement, so a metrics log ("Epoch 3: loss 0.52")
    keeps its rows apart. One pass over the key both counts and replaces its numbers."""
    if _DECIMAL.search(key):
        return key
    blind, numbers = _DIGITS.subn("0", key)
    return blind if 0 < numbers <= _MAX_BLIND_NUMBERS and _PLAIN.fullmatch(key) else key


_KEY, _BLIND_KEY, _UNLABELLED_KEY = 2, 3, 4  # fields of an _Item


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
    characters. Items are cut from the end backwards, only as far as the walks reach.

    Then the same, digit-blind and stricter: the same one or two rows with a number
    counting or drifting in them ("| 35 | China | 350 |", "| Caravaggio | 1618 |", also
    across widths: "| Player 9 |", "| Player 10 |"). Stricter because logs are rows of a
    few messages, and only for words and table cells with at most three numbers:
    timestamps and code ("'\\x01'  # 0x01") count legitimately.

    Last, with the plain limits, the items less a leading label: a list that keeps its
    names but repeats one description ("14. Black Star: A deck of cards with different
    rules", "15. Blackstar: A deck of cards with different rules").

    A pass whose keys are the plain ones on every item cut so far is skipped: its limits
    are the plain pass's or stricter, so it would walk the same items and find nothing.
    """
    plain = _Limits(min_items, max_distinct, max_share, min_chars, max_recovery_chars)
    blind = plain._replace(max_distinct=max(1, max_distinct // 2), max_share=max_share / 2)
    items = _TailItems(text, min_letters)
    found = _after_recovery(items, len(text), plain, _KEY)
    if found is None and items.blinded:
        found = _after_recovery(items, len(text), blind, _BLIND_KEY)
    if found is None and items.labelled:
        found = _after_recovery(items, len(text), plain, _UNLABELLED_KEY)
    return found


def _after_recovery(
    items: _TailItems, end_of_text: int, lim: _Limits, field: int
) -> ItemSet | None:
    """_stretch ending at each of the last items that leaves a short enough recovery."""
    skip = 0
    while (last := items.get(skip)) is not None:
        recovery = end_of_text - last[1]
        if recovery > lim.max_recovery_chars:
            break
        found = _stretch(items, skip, lim, field)
        if found is not None and found.end - found.start > recovery:
            return found
        skip += 1
    return None


def _stretch(items: _TailItems, skip: int, lim: _Limits, field: int) -> ItemSet | None:
    """The longest stretch ending at item ``skip`` (from the end) that passes (see above),
    comparing the items' ``field`` (key or blind key); the walk back stops at the first
    item past ``max_distinct`` distinct ones."""
    if _all_distinct_first(items, skip, lim, field):
        return None
    best: ItemSet | None = None
    seen: set[str] = set()
    chars = 0
    end = items.last_first[skip][1]
    for n, item in enumerate(items.walk(skip), 1):
        key = item[field]
        seen.add(key)
        chars += len(key)
        if len(seen) > lim.max_distinct:
            break
        if n >= lim.min_items and len(seen) <= lim.max_share * n and chars >= lim.min_chars:
            best = ItemSet(item[0], end, n, len(seen))
    return best


def _all_distinct_first(items: _TailItems, skip: int, lim: _Limits, field: int) -> bool:
    """Are the first ``max_distinct + 1`` items of the walk from ``skip`` all distinct?

    Then _stretch finds nothing, and this says so with one set built in C instead of a
    walk: while every item is new, distinct items are all of them, over ``max_share``
    (< 1) of the stretch, and the next one stops the walk. On clean text most walks end
    this way, so the rule's cost falls to about a set per item it ends at.
    """
    head = lim.max_distinct + 1
    if lim.max_share >= 1 or items.get(skip + head - 1) is None:
        return False
    return len({item[field] for item in items.last_first[skip : skip + head]}) == head

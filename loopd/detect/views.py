"""Normalized views of the text, and the maps from view offsets back to the text."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from itertools import islice

from loopd.detect.counters import (
    END_COUNTER,
    INLINE_COUNTER,
    counter_parts,
    counter_text,
    undo_line_counters,
    unsub,
)

_DELETE_PUNCT = str.maketrans(dict.fromkeys(string.punctuation + "“”‘’—–…•·«»¡¿"))
# Dropped from the near and counter views: ASCII punctuation, every character str.split()
# treats as whitespace, and common typographic punctuation.
DROPPED = (
    string.punctuation
    + "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
    + "".join(map(chr, range(0x2000, 0x200B)))
    + "“”‘’—–…•·«»¡¿"
)
DROP = str.maketrans(dict.fromkeys(DROPPED))
# The same deletions and case folding as bytes tables: ``bytes.translate`` runs a plain C
# table loop, 2-3x faster than ``str.translate`` on ASCII text and ~20x faster on text
# with a few non-ASCII characters (where ``str.translate`` looks each character up in a
# dict). Non-ASCII text goes through UTF-8, whose multi-byte sequences never contain
# ASCII bytes, and a regex drops the few non-ASCII characters in DROPPED.
_ASCII_LOWER = bytes.maketrans(string.ascii_uppercase.encode(), string.ascii_lowercase.encode())
_ASCII_ZERO = bytes.maketrans(b"123456789", b"000000000")
_ASCII_DROP = "".join(c for c in DROPPED if c.isascii()).encode()
_ASCII_PUNCT = string.punctuation.encode()
_WIDE_DROP = re.compile("[" + re.escape("".join(c for c in DROPPED if not c.isascii())) + "]+")
_NONZERO_DIGIT = re.compile("[1-9]")
_NON_SPACE = re.compile(r"\S+")
_WORDS_64 = re.compile(r"\s*(?:\S+\s+){64}")
DIGIT = re.compile(r"[0-9]")


def lower_same_length(text: str) -> str:
    """Lower-case without changing length, so offsets stay valid."""
    low = text.lower()
    if len(low) == len(text):
        return low
    return "".join(c.lower()[:1] or c for c in text)


def kept(low: str) -> str:
    """``low.translate(DROP)`` (letters, digits and other symbols), through the byte tables."""
    if low.isascii():
        return low.encode("ascii").translate(None, _ASCII_DROP).decode("ascii")
    ascii_dropped = low.encode("utf-8", "surrogatepass").translate(None, _ASCII_DROP)
    return _WIDE_DROP.sub("", ascii_dropped.decode("utf-8", "surrogatepass"))


def _kept_bytes(data: bytes) -> bytes:
    """kept for ASCII text already encoded."""
    return data.translate(None, _ASCII_DROP)


def near_view(text: str) -> str:
    """``kept(lower_same_length(text))``; for ASCII text (nearly all) one C pass folds and drops."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_LOWER, _ASCII_DROP).decode("ascii")
    return kept(lower_same_length(text))


def zeroed(s: str) -> str:
    """``s`` with the digits 1-9 written as "0" (the counter gate's view)."""
    if s.isascii():
        return s.encode("ascii").translate(_ASCII_ZERO).decode("ascii")
    return _NONZERO_DIGIT.sub("0", s)


def punctuation_count(s: str) -> int:
    """How many characters of ``s`` are punctuation (ASCII or typographic)."""
    if s.isascii():
        return len(s) - len(s.encode("ascii").translate(None, _ASCII_PUNCT))
    return len(s) - len(s.translate(_DELETE_PUNCT))


def view_of(text: str, rule: str) -> str:
    """The normalized string a rule searches.

    ``near_cycle`` and ``counter_cycle``: lower-cased letters and digits only -- spacing
    and punctuation jitter simply vanish, and one C ``translate`` builds it. ``cycle`` (for
    loops of punctuation, which that view drops): lower-cased words joined by single spaces.
    """
    if rule == "counter_cycle":
        text = counter_text(text)
    if rule == "cycle":
        return " ".join(lower_same_length(text).split())
    return near_view(text)


def to_original(text: str, rule: str, view: str, ks: tuple[int, ...]) -> list[int]:
    """Map offsets ``ks`` (ascending) of ``view == view_of(text, rule)`` back into ``text``.

    Only called once a loop is found. In the letters-and-digits views offset ``k`` is the
    ``k``-th kept character of the source (skipped 256 at a time in the regex engine); in
    the word view it is character ``c`` of word ``w``. The counter replacement is undone
    last.
    """
    src = counter_text(text) if rule == "counter_cycle" else text
    low = lower_same_length(src)
    out = []
    for k in ks:
        if k >= len(view):
            out.append(len(src.rstrip()))
        elif rule == "cycle":
            out.append(_word_offset(low, view, k))
        else:
            out.append(kept_offset(low, k))
    if rule == "counter_cycle":
        inlined, listed, ended = counter_parts(text)
        out = [pos + 1 for pos in out]  # offsets into ended ("\n" + ...)
        if ended is not listed:
            out = unsub(END_COUNTER, 2, listed, out)
        if listed is not inlined:
            out = unsub(INLINE_COUNTER, 2, inlined, out)
        out = [pos - 1 for pos in undo_line_counters("\n" + text, inlined, out)]
    return [min(pos, len(text)) for pos in out]


def kept_offset(low: str, k: int) -> int:
    """Offset in ``low`` of its ``k``-th character that the letters-and-digits view keeps.

    Counts kept characters a 1,024-character chunk at a time with ``translate`` (C speed),
    then bisects inside the chunk; a regex stepping over kept characters is ~20x slower.
    ASCII text (nearly all) is encoded once and bisected as bytes.
    """
    if low.isascii():
        data: str | bytes = low.encode("ascii")
        count_kept: Callable = _kept_bytes
    else:
        data, count_kept = low, kept
    at = 0
    while True:
        chunk = data[at : at + 1024]
        if not chunk:
            return len(low)
        count = len(count_kept(chunk))
        if count > k:
            break
        k, at = k - count, at + 1024
    lo, hi = 0, len(chunk) - 1  # smallest x with more than k kept in chunk[: x + 1]
    while lo < hi:
        mid = (lo + hi) // 2
        if len(count_kept(chunk[: mid + 1])) > k:
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

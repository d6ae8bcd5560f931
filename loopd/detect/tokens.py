"""The token rule: exact cycles of token ids (what vLLM's own repetition stop sees)."""

from __future__ import annotations

from array import array
from collections.abc import Sequence

from loopd.detect.runs import PROBE, Limits, Run, tail_run


def token_string(token_ids: Sequence[int]) -> str:
    """Token ids as one string (one code point per token) so C string search applies.

    Built through a 32-bit array and a UTF-32 decode (``surrogatepass`` admits ids in
    the surrogate range), ~10x faster than joining ``chr`` of each id.
    """
    try:
        return array("I", token_ids).tobytes().decode("utf-32-le", "surrogatepass")
    except (OverflowError, TypeError, UnicodeDecodeError):  # ids beyond U+10FFFF
        dense: dict[int, int] = {}
        return "".join(chr(dense.setdefault(t, len(dense))) for t in token_ids)


def token_pass(token_ids: Sequence[int], lim: Limits) -> Run | None:
    """The token rule's tail search, on the last few hundred ids first.

    Converting ids to a string costs more than searching it, and the search only proposes
    periods from occurrences within ``max_period`` of the end. So the ids it can reach
    are converted first; the whole sequence only when a run found there, or one that
    reaches the window's start, needs its full extent.
    """
    window = lim.max_period + lim.max_recovery + 2 * PROBE + 1
    if len(token_ids) > 2 * window:
        touched: list[Run] = []
        tail = token_string(token_ids[-window:])
        if tail_run(tail, lim, touched=touched) is None and not touched:
            return None
    return tail_run(token_string(token_ids), lim)

"""The detector's fast paths give exactly what their plain definitions give.

``detect`` builds its views with byte tables, maps counter offsets back with prefix sums,
skips regexes behind cheap substring checks and converts only the last few hundred
token ids when it can. Each shortcut is checked here against the slow, obvious version
on adversarial strings: non-ASCII letters and punctuation, case folds that change
length, lone surrogates, counters next to each other.
"""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loopd.detect import DEFAULT_CONFIG, items
from loopd.detect.counters import (
    END_COUNTER,
    INLINE_COUNTER,
    LINE_COUNTER,
    has_letters,
    may_have_end_counter,
    may_have_inline_counter,
    undo_line_counters,
    unsub,
)
from loopd.detect.plan import plan_for
from loopd.detect.runs import PROBE, Limits, tail_run
from loopd.detect.tokens import token_pass, token_string
from loopd.detect.views import (
    DROP,
    DROPPED,
    kept,
    kept_offset,
    lower_same_length,
    near_view,
    punctuation_count,
    zeroed,
)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ASCII and the non-ASCII characters the views treat specially (dropped punctuation and
# spaces, a length-changing lower-case, a non-ASCII digit, a lone surrogate).
TRICKY = "aB9 .,|*#>-\t\n0)(“”—…\xa0\u2003\u3000İÉé٣\ud800"
TEXT = st.text(alphabet=TRICKY, max_size=300) | st.text(max_size=200)
COUNTED = st.lists(
    st.tuples(
        st.sampled_from(["", " ", "| ", "* ", "#", "\t>", "- "]),
        st.integers(0, 99999),
        st.sampled_from([". ", ") ", ".", " ", ": "]),
        st.text(alphabet="ab 12.)\t-:=#\r", max_size=12),
    ),
    max_size=30,
).map(lambda rows: "".join(f"\n{m}{n}{sep}{rest}" for m, n, sep, rest in rows))


def _unsub_reference(pattern: re.Pattern[str], size: int, src: str, pos: int) -> int:
    """The match-by-match mapping the fast versions replace."""
    shift = 0
    for m in pattern.finditer(src):
        a, b = m.span()
        if pos < a - shift:
            break
        if pos < a - shift + size:
            return a + (pos - (a - shift))
        shift += (b - a) - size
    return pos + shift


@SETTINGS
@given(TEXT)
def test_views_equal_their_str_translate_definitions(text):
    assert near_view(text) == lower_same_length(text).translate(DROP)
    assert kept(text) == text.translate(DROP)
    assert zeroed(text) == text.translate(str.maketrans("123456789", "000000000"))
    punct = str.maketrans(dict.fromkeys(string.punctuation + "“”‘’—–…•·«»¡¿"))
    assert punctuation_count(text) == len(text) - len(text.translate(punct))


@SETTINGS
@given(TEXT, st.data())
def test_kept_offset_finds_the_kth_kept_character(text, data):
    low = lower_same_length(text)
    kept = [i for i, c in enumerate(low) if c not in DROPPED]
    k = data.draw(st.integers(0, len(kept) + 2))
    assert kept_offset(low, k) == (kept[k] if k < len(kept) else len(low))


@SETTINGS
@given(COUNTED | TEXT)
def test_counter_hints_never_hide_a_match(text):
    if INLINE_COUNTER.search(text):
        assert may_have_inline_counter(text)
    if END_COUNTER.search(text):
        assert may_have_end_counter(text)


@SETTINGS
@given(COUNTED | TEXT, st.data())
def test_counter_offsets_map_back_like_the_plain_loop(text, data):
    src = "\n" + text
    inlined = LINE_COUNTER.sub("\n0", src)
    positions = sorted(data.draw(st.lists(st.integers(0, len(inlined) + 3), max_size=4)))
    expected = [_unsub_reference(LINE_COUNTER, 2, src, p) for p in positions]
    assert undo_line_counters(src, inlined, positions) == expected
    assert unsub(LINE_COUNTER, 2, src, positions) == expected
    subbed = INLINE_COUNTER.sub(" 0", inlined)
    positions = sorted(data.draw(st.lists(st.integers(0, len(subbed) + 3), max_size=4)))
    expected = [_unsub_reference(INLINE_COUNTER, 2, inlined, p) for p in positions]
    assert unsub(INLINE_COUNTER, 2, inlined, positions) == expected
    ended = END_COUNTER.sub("-0", subbed)
    positions = sorted(data.draw(st.lists(st.integers(0, len(ended) + 3), max_size=4)))
    expected = [_unsub_reference(END_COUNTER, 2, subbed, p) for p in positions]
    assert unsub(END_COUNTER, 2, subbed, positions) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(0, 60), min_size=0, max_size=1500),
    st.lists(st.integers(0, 60), min_size=1, max_size=300),
    st.integers(0, 1500),
)
def test_windowed_token_pass_equals_the_full_search(prefix, unit, repeats_len):
    """Loops of every period and length, ending at the end, behind any prefix."""
    ids = prefix + (unit * (repeats_len // len(unit) + 1))[:repeats_len]
    lim = plan_for(DEFAULT_CONFIG).tokens
    assert token_pass(ids, lim) == tail_run(token_string(ids), lim)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(0, 3), min_size=0, max_size=300),
    st.lists(st.integers(0, 3), min_size=1, max_size=40),
    st.integers(0, 300),
    st.sampled_from([(2.0, 1, 8, 0), (2.5, 10, 40, 0), (3.0, 48, 64, 16), (4.0, 200, 64, 0)]),
)
def test_windowed_token_pass_equals_the_full_search_for_other_limits(
    prefix, unit, repeats_len, limits
):
    """Short periods, fractional repeats and a recovery: the window still sees every run."""
    min_repeats, min_span, max_period, max_recovery = limits
    ids = prefix + (unit * (repeats_len // len(unit) + 1))[:repeats_len]
    lim = Limits(min_repeats, min_span, max_period, max_recovery, 0.5, word_aligned=False)
    assert token_pass(ids, lim) == tail_run(token_string(ids), lim)


@pytest.mark.parametrize("period", [1, 7, 100, 511, 512, 513])
@pytest.mark.parametrize("shift", [-30, -2, -1, 0, 1, 2, 30])
def test_windowed_token_pass_at_the_window_edge(period, shift):
    """Runs that end just inside, at, or just past the converted window's start."""
    lim = plan_for(DEFAULT_CONFIG).tokens
    window = lim.max_period + lim.max_recovery + 2 * PROBE + 1
    unit = list(range(1000, 1000 + period))
    loop = (unit * (window // period + 3))[: window + shift]
    ids = list(range(2000, 4000)) + loop
    assert token_pass(ids, lim) == tail_run(token_string(ids), lim)


# The item separator as first written: lookbehinds at every position, and greedy runs
# that backtrack through indentation (see items._SEPARATOR).
_PLAIN_SEPARATOR = re.compile(r"(?<=[,;])\s+|(?<=[.!?])\s+(?=[A-Z\"'*])|\s+(?=\d{1,4}[.)]\s)")
ITEM_LINE = st.text(alphabet="aB9 ,;.!?)\t\u2003'\"*", max_size=120)


@SETTINGS
@given(ITEM_LINE | TEXT.map(lambda s: s.replace("\n", " ")))
def test_item_separator_cuts_where_the_plain_regex_does(line):
    fast = [m.span(m.lastindex or 0) for m in items._SEPARATOR.finditer(line)]
    assert fast == [m.span() for m in _PLAIN_SEPARATOR.finditer(line)]


@SETTINGS
@given(TEXT.map(str.lower), st.integers(0, 4))
def test_item_letter_count_equals_the_regex_count(key, count):
    assert items._has_letters(key, count) == has_letters(key, 0, len(key), count)


def _plain_tail_item_set(text: str, lim: dict) -> items.ItemSet | None:
    """tail_item_set as first written: all three passes, every walk to its end."""
    cut = list(items._TailItems(text, lim["min_letters"]).walk(0))
    plain = items._Limits(
        lim["min_items"], lim["max_distinct"], lim["max_share"], lim["min_chars"], 40
    )
    blind = plain._replace(max_distinct=max(1, plain.max_distinct // 2))
    blind = blind._replace(max_share=plain.max_share / 2)
    for limits, field in ((plain, 2), (blind, 3), (plain, 4)):
        for skip, last in enumerate(cut):
            recovery = len(text) - last[1]
            if recovery > limits.max_recovery_chars:
                break
            best = _plain_stretch(cut[skip:], limits, field)
            if best is not None and last[1] - best.start > recovery:
                return best._replace(end=last[1])
    return None


def _plain_stretch(walk: list, limits, field: int) -> items.ItemSet | None:
    best, seen, chars = None, set(), 0
    for n, item in enumerate(walk, 1):
        seen.add(item[field])
        chars += len(item[field])
        if len(seen) > limits.max_distinct:
            break
        passes = n >= limits.min_items and len(seen) <= limits.max_share * n
        if passes and chars >= limits.min_chars:
            best = items.ItemSet(item[0], 0, n, len(seen))
    return best


_LEADS = ["", "1. ", "12) ", "- ", "| ", "ruby: ", "opal: ", "jade 3: ", "onyx: ", "Iris: "]
_ITEMS = ["Audi", "Volvo 12", "Volvo 13", "Volvo 140", "a red gem", "x, y and z", "Nissan."]
# A few items and leads per text, so that item sets (plain, digit-blind, unlabelled) are
# common and the passes after the plain one often decide.
ITEM_TEXT = st.tuples(
    st.lists(st.sampled_from(_LEADS), min_size=1, max_size=4, unique=True),
    st.lists(st.sampled_from(_ITEMS), min_size=1, max_size=3, unique=True),
).flatmap(
    lambda chosen: st.lists(
        st.tuples(
            st.sampled_from(chosen[0]),
            st.sampled_from(chosen[1]),
            st.sampled_from(["\n", ", ", ". "]),
        ),
        max_size=40,
    ).map(lambda rows: "".join(lead + item + sep for lead, item, sep in rows))
)


@settings(SETTINGS, max_examples=400)
@example("1. Volvo 12\n2. Volvo 13\n" * 6, 8, 1, 0.25, 0)  # found by the digit-blind pass
@example("".join(f"{g}: a red gem\n" for g in ["ruby", "opal", "jade"] * 4), 8, 2, 0.5, 0)
@given(
    ITEM_TEXT | ITEM_TEXT | TEXT,
    st.integers(2, 10),
    st.integers(1, 9),
    st.sampled_from([0.25, 0.5, 1.0]),
    st.integers(0, 80),
)
def test_item_sets_equal_the_plain_walks(text, min_items, max_distinct, max_share, min_chars):
    lim = {
        "min_items": min_items,
        "max_distinct": max_distinct,
        "max_share": max_share,
        "min_letters": 2,
        "max_recovery_chars": 40,
        "min_chars": min_chars,
    }
    assert items.tail_item_set(text, **lim) == _plain_tail_item_set(text, lim)

"""The detector's fast paths give exactly what their plain definitions give.

``detect`` builds its views with byte tables, maps counter offsets back with prefix sums,
skips regexes behind cheap substring checks and converts only the last few hundred
token ids when it can. Each shortcut is checked here against the slow, obvious version
on adversarial strings: non-ASCII letters and punctuation, case folds that change
length, lone surrogates, counters next to each other.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loopd import detect as d

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
    assert d._near_view(text) == d._lower(text).translate(d._DROP)
    assert d._kept(text) == text.translate(d._DROP)
    assert d._zeroed(text) == text.translate(str.maketrans("123456789", "000000000"))
    punct = str.maketrans(dict.fromkeys(d.string.punctuation + "“”‘’—–…•·«»¡¿"))
    assert d._punctuation(text) == len(text) - len(text.translate(punct))


@SETTINGS
@given(TEXT, st.data())
def test_kept_offset_finds_the_kth_kept_character(text, data):
    low = d._lower(text)
    kept = [i for i, c in enumerate(low) if c not in d._DROPPED]
    k = data.draw(st.integers(0, len(kept) + 2))
    assert d._kept_offset(low, k) == (kept[k] if k < len(kept) else len(low))


@SETTINGS
@given(COUNTED | TEXT)
def test_counter_hints_never_hide_a_match(text):
    if d._INLINE_COUNTER.search(text):
        assert d._may_have_inline_counter(text)
    if d._END_COUNTER.search(text):
        assert d._may_have_end_counter(text)


@SETTINGS
@given(COUNTED | TEXT, st.data())
def test_counter_offsets_map_back_like_the_plain_loop(text, data):
    src = "\n" + text
    inlined = d._LINE_COUNTER.sub("\n0", src)
    positions = sorted(data.draw(st.lists(st.integers(0, len(inlined) + 3), max_size=4)))
    expected = [_unsub_reference(d._LINE_COUNTER, 2, src, p) for p in positions]
    assert d._undo_line_counters(src, inlined, positions) == expected
    assert d._unsub(d._LINE_COUNTER, 2, src, positions) == expected
    subbed = d._INLINE_COUNTER.sub(" 0", inlined)
    positions = sorted(data.draw(st.lists(st.integers(0, len(subbed) + 3), max_size=4)))
    expected = [_unsub_reference(d._INLINE_COUNTER, 2, inlined, p) for p in positions]
    assert d._unsub(d._INLINE_COUNTER, 2, inlined, positions) == expected
    ended = d._END_COUNTER.sub("-0", subbed)
    positions = sorted(data.draw(st.lists(st.integers(0, len(ended) + 3), max_size=4)))
    expected = [_unsub_reference(d._END_COUNTER, 2, subbed, p) for p in positions]
    assert d._unsub(d._END_COUNTER, 2, subbed, positions) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.integers(0, 60), min_size=0, max_size=1500),
    st.lists(st.integers(0, 60), min_size=1, max_size=300),
    st.integers(0, 1500),
)
def test_windowed_token_pass_equals_the_full_search(prefix, unit, repeats_len):
    """Loops of every period and length, ending at the end, behind any prefix."""
    ids = prefix + (unit * (repeats_len // len(unit) + 1))[:repeats_len]
    lim = d._plan(d.DEFAULT_CONFIG).tokens
    assert d._token_pass(ids, lim) == d._tail_run(d._token_string(ids), lim)


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
    lim = d._Limits(min_repeats, min_span, max_period, max_recovery, 0.5, word_aligned=False)
    assert d._token_pass(ids, lim) == d._tail_run(d._token_string(ids), lim)


@pytest.mark.parametrize("period", [1, 7, 100, 511, 512, 513])
@pytest.mark.parametrize("shift", [-30, -2, -1, 0, 1, 2, 30])
def test_windowed_token_pass_at_the_window_edge(period, shift):
    """Runs that end just inside, at, or just past the converted window's start."""
    lim = d._plan(d.DEFAULT_CONFIG).tokens
    window = lim.max_period + lim.max_recovery + 2 * d._PROBE + 1
    unit = list(range(1000, 1000 + period))
    loop = (unit * (window // period + 3))[: window + shift]
    ids = list(range(2000, 4000)) + loop
    assert d._token_pass(ids, lim) == d._tail_run(d._token_string(ids), lim)

"""The streaming LoopWatcher: it agrees with the batch detector (its cost: bench/detect.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from loopd.detect import LoopWatcher, detect

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def token_stream(draw) -> list[int]:
    """Random tokens, maybe a repeated unit, maybe a tail after it (a recovery)."""
    prefix = draw(st.lists(st.integers(0, 50_000), max_size=300))
    unit = draw(st.lists(st.integers(0, 50_000), min_size=1, max_size=40))
    repeats = draw(st.integers(0, 80))
    tail = draw(st.lists(st.integers(0, 50_000), max_size=draw(st.sampled_from([0, 10, 200]))))
    return prefix + unit * repeats + tail


def _watch(ids: list[int]):
    watcher = LoopWatcher()
    for t in ids:
        if (det := watcher.feed(t)) is not None:
            return det, watcher.consumed
    return watcher.finish(), len(ids)


@SETTINGS
@given(token_stream())
def test_watcher_agrees_with_the_batch_detector(ids):
    """Firing after c tokens means the batch detector fires on those c tokens, at the same
    place; never firing means the batch detector sees no loop in the whole stream."""
    det, consumed = _watch(ids)
    batch = detect("", token_ids=ids[:consumed])
    assert (det is not None) == batch.degenerate
    if det is not None:
        assert det.loop_start_token == batch.loop_start_token
        assert det.period == batch.period


@st.composite
def text_pieces(draw) -> list[str]:
    """Word pieces of a text: prose, maybe a repeated sentence, maybe a closing line."""
    words = st.text(alphabet="abcdefghij", min_size=1, max_size=8)
    prefix = draw(st.lists(words, max_size=60))
    unit = [*draw(st.lists(words, min_size=1, max_size=10)), draw(st.sampled_from([".", ","]))]
    tail = draw(st.lists(words, max_size=draw(st.sampled_from([0, 5, 80]))))
    return [w + " " for w in prefix + unit * draw(st.integers(0, 40)) + tail]


@SETTINGS
@given(text_pieces())
def test_watcher_on_text_agrees_with_the_batch_detector(pieces):
    watcher = LoopWatcher()
    det = next((d for p in pieces if (d := watcher.feed(p)) is not None), None)
    det = det or watcher.finish()
    seen = "".join(pieces)[: watcher.consumed]
    batch = detect(seen)
    assert (det is not None) == batch.degenerate
    if det is not None:
        assert det.loop_start == batch.loop_start


def test_watcher_reports_soon_after_the_loop_is_established():
    cfg_every = LoopWatcher().config.watch_check_every
    prefix, unit = list(range(1000, 1100)), [1, 2, 3, 4, 5, 6]
    det, consumed = _watch(prefix + unit * 200)
    assert det is not None and det.loop_start_token == 100 and det.period == 6
    established = 100 + max(48, 3 * 6)  # min_loop_tokens, min_repeats periods
    assert consumed <= established + cfg_every


def test_watcher_on_text_pieces():
    watcher = LoopWatcher()
    pieces = ["Once ", "upon ", "a ", "time. "] + ["The ", "cat ", "sat ", "down. "] * 60
    fired = (
        next((d for p in pieces if (d := watcher.feed(p)) is not None), None) or watcher.finish()
    )
    assert fired is not None and fired.degenerate
    assert "".join(pieces)[fired.loop_start :].startswith("The cat")


def test_watcher_stays_quiet_on_a_long_clean_stream():
    """No false alarm on 20k cycle-free ids, and every id is accounted for. Its cost per
    token is the benchmark's to measure (``bench/detect.py``), not a test's: a timing
    assert here fails on a busy CI machine and proves nothing about the code."""
    ids = [(i * 7919) % 50_000 for i in range(20_000)]  # no cycle
    watcher = LoopWatcher()
    for t in ids:
        assert watcher.feed(t) is None
    assert watcher.consumed == len(ids)
    assert watcher.finish() is None

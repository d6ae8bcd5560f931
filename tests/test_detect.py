"""The degeneration detector: shapes it must catch, text it must leave alone, its config.

Property tests (hypothesis) state the contract; the example tests pin the hard cases
seen in real SmolLM2 output and the legitimately repetitive text from the issue.
"""

from __future__ import annotations

import math
import random
import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from loopd.detect import DEFAULT_CONFIG, DetectorConfig, detect

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# A prefix alphabet disjoint (after lower-casing) from the unit's letters, so the true
# loop start is known up to the separators the two share.
PREFIX = st.text(alphabet="ABCDEFGHIJKLM0123456789 .,;:\n-", max_size=400)
WORD = st.text(alphabet="nopqrstuvwxyz", min_size=1, max_size=9)
SEPARATOR = st.sampled_from([" ", ". ", ", ", "\n", "! ", " | ", ";\n"])


@st.composite
def looped(draw) -> tuple[str, int, int]:
    """(text, true loop start, unit length): a prefix, then a unit repeated to the end."""
    prefix = draw(PREFIX)
    words = draw(st.lists(WORD, min_size=1, max_size=12))
    unit = " ".join(words) + draw(SEPARATOR)
    cfg = DEFAULT_CONFIG
    # Thresholds count normalized characters (letters and digits); one unit of slack for
    # each edge (the cut at the end, the word alignment at the start).
    letters = sum(map(len, words))
    enough = max(cfg.min_repeats + 1, math.ceil(cfg.min_loop_chars / letters) + 2)
    repeats = draw(st.integers(int(enough), int(enough) + 20))
    body = unit * repeats
    cut = draw(st.integers(0, len(unit) - 1))  # the token limit may stop mid-unit
    return prefix + body[: len(body) - cut], len(prefix), len(unit)


@SETTINGS
@given(looped())
def test_any_text_then_a_repeated_unit_is_detected(case):
    text, truth, unit = case
    det = detect(text)
    assert det.degenerate
    assert abs(det.loop_start - truth) <= unit
    assert det.repeats >= DEFAULT_CONFIG.min_repeats


@st.composite
def table(draw) -> str:
    """A markdown or CSV table of distinct rows sharing one template, shuffled."""
    names = draw(
        st.lists(
            st.text(string.ascii_lowercase, min_size=3, max_size=12),
            min_size=3,
            max_size=60,
            unique=True,
        )
    )
    rows = [
        (n, draw(st.integers(0, 10**6)), draw(st.floats(0, 100).map("{:.2f}".format)))
        for n in names
    ]
    rows = draw(st.permutations(rows))
    numbered = draw(st.booleans())
    if draw(st.booleans()):
        lines = ["| # | name | count | share |" if numbered else "| name | count | share |"]
        lines.append("|---|---|---|---|" if numbered else "|---|---|---|")
        lines += [
            (f"| {i + 1} " if numbered else "") + f"| {n} | {c} | {s} |"
            for i, (n, c, s) in enumerate(rows)
        ]
    else:
        lines = ["id,name,count,share" if numbered else "name,count,share"]
        lines += [
            (f"{i + 1}," if numbered else "") + f"{n},{c},{s}" for i, (n, c, s) in enumerate(rows)
        ]
    return "\n".join(lines) + "\n"


@SETTINGS
@given(table())
def test_tables_with_shuffled_rows_never_fire(text):
    assert not detect(text).degenerate


@SETTINGS
@given(
    st.one_of(st.text(max_size=600), looped().map(lambda c: c[0]), table()),
    st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003", max_size=50),
)
def test_trailing_whitespace_does_not_change_the_verdict(text, ws):
    first, second = detect(text), detect(text + ws)
    assert first.degenerate == second.degenerate
    assert first.rule == second.rule
    assert first.loop_start == second.loop_start


# --- shapes it must catch --------------------------------------------------------------


def test_counter_list_is_a_loop():
    """SmolLM2's favourite: only the counter changes ('39. Violin', '40. Violin')."""
    text = "Here are 50 instruments:\n\n1. Piano\n2. Guitar\n" + "".join(
        f"{i}. Violin\n" for i in range(3, 51)
    )
    det = detect(text)
    assert det.degenerate and det.rule == "counter_cycle"
    assert text[det.loop_start :].startswith("Violin") or text[det.loop_start :].startswith("3.")


def test_counter_list_with_a_second_number_is_a_loop():
    """Real SmolLM2 output: a second number closing the line counts on too."""
    head = "Here are 50 kinds of tuna:\n\n1. Albacore\n2. Skipjack\n"
    text = head + "".join(f"{i}. Bluefin-{i + 21}\n" for i in range(3, 30))
    det = detect(text + "\nYou can find these fish in the list above.")
    assert det.degenerate and det.rule == "counter_cycle"
    assert text[det.loop_start :].startswith(("3.", "Bluefin"))
    text = "".join(f"{i}. Branagh-style-baked-with-salt: {i + 27}\n" for i in range(1, 12))
    assert detect(text).rule == "counter_cycle"


def test_jittered_repeats_are_a_near_cycle():
    unit = ["The cat sat on the mat. ", "the cat sat on the mat, ", "The  cat sat on the mat! "]
    order = [0, 1, 1, 2, 0, 2, 2, 1, 0, 0, 1, 2, 1, 0, 2, 0, 1, 2, 2, 0]  # no exact cycle
    det = detect("Once upon a time. " + "".join(unit[i] for i in order))
    assert det.degenerate and det.rule == "near_cycle"
    assert 20 <= det.period <= 30


def test_single_token_loop_and_paragraph_loop():
    assert detect("Answer: " + "the " * 100).period == 4
    para = " ".join(
        f"Sentence number {w} of a long paragraph goes here." for w in "abcdefghijklmnopqrst"
    )
    det = detect("Intro.\n\n" + (para + "\n\n") * 4)
    assert det.degenerate and abs(det.period - len(para) - 2) <= 2


def test_nested_loop_reports_the_outer_loop():
    """A repeated paragraph that itself repeats a line: the loop starts at the first one."""
    block = "Line one is here.\n" * 5 + "Then a different line closes the block.\n\n"
    det = detect("Intro. " + block * 8)
    assert det.loop_start == len("Intro. ") and det.period == len(block)


def test_unicode_and_crlf_loops():
    for text in (
        "Привет. " + "Это цикл, да! " * 30,
        "你好。" + "这是一个循环。" * 40,
        "Hi.\r\n" + "Same line here.\r\n" * 40,
    ):
        assert detect(text).degenerate, text[:20]


def test_loop_then_short_recovery_counts_but_long_recovery_does_not():
    loop = "Intro. " + "I will repeat myself. " * 20
    assert detect(loop + "\n\nI hope this helps!").degenerate
    story = " ".join(f"Then chapter {w} began, and it was different." for w in string.ascii_letters)
    assert not detect(loop + "\n\n" + story).degenerate


def test_repetition_finish_reason_is_degenerate():
    det = detect("short answer", finish_reason="repetition")
    assert det.degenerate and det.rule == "finish_repetition"
    det = detect("x " + "ab cd " * 5, finish_reason="repetition")
    assert det.degenerate and det.loop_start is not None


def test_token_ids_give_the_token_offset():
    ids = list(range(100, 130)) + [7, 8, 9, 10] * 30
    text = "".join(f"w{t} " for t in ids)
    det = detect(text, token_ids=ids)
    assert det.degenerate and det.loop_start_token == 30
    only_tokens = detect("", token_ids=ids)
    assert only_tokens.rule == "token_cycle" and only_tokens.period == 4


def test_punctuation_loop_is_caught_but_separator_lines_are_not():
    assert detect("Wow" + "!" * 300).degenerate
    doc = "Title\n" + "=" * 79 + "\n\nSome text here.\n" + ("-" * 79 + "\n") * 5 + "The end.\n"
    assert not detect(doc).degenerate
    assert not detect("Some text here.\n" + ("-" * 79 + "\n") * 5).degenerate


# --- text it must leave alone ------------------------------------------------------------


def test_numbered_list_of_different_items_is_clean():
    items = "apple banana cherry damson elderberry fig grape honeydew kiwi lemon mango".split()
    assert not detect("".join(f"{i}. {w}\n" for i, w in enumerate(items * 3, 1))[:-60]).degenerate
    assert not detect("".join(f"{i}. {w}\n" for i, w in enumerate(items, 1))).degenerate


def test_lines_ending_in_numbers_with_different_items_are_clean():
    items = "apple banana cherry damson elderberry fig grape honeydew kiwi lemon mango".split()
    assert not detect(
        "".join(f"{i}. {w}: {7 * i % 40}\n" for i, w in enumerate(items, 1))
    ).degenerate
    lines = [f"2024-05-01 12:00:{s:02d},123 INFO queue depth: {s * 7 % 50}" for s in range(60)]
    assert not detect("\n".join(lines)).degenerate


def test_log_with_repeated_messages_is_clean():
    lines = [
        f"2024-05-01 12:{m:02d}:{s:02d},123 INFO heartbeat ok" for m in range(3) for s in range(60)
    ]
    assert not detect("\n".join(lines)).degenerate


def test_short_legitimate_repetition_is_clean():
    assert not detect("No, no, no, no! I said it very very very clearly.").degenerate
    assert not detect("x = 0\n" * 5).degenerate


def test_licence_boilerplate_is_clean():
    mit = (
        "Permission is hereby granted, free of charge, to any person obtaining a copy of "
        'this software. THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND.\n\n'
    )
    assert not detect("Copyright (c) 2020 A\n" + mit + "Copyright (c) 2021 B\n" + mit).degenerate


# --- config ----------------------------------------------------------------------------


def test_config_documents_every_field():
    for name, field in DetectorConfig.model_fields.items():
        assert field.description and len(field.description) > 20, name


@pytest.mark.parametrize(
    ("kwargs", "fix"),
    [
        ({"min_repeats": 1}, "set 2 or more"),
        ({"min_loop_chars": 0}, "positive"),
        ({"max_recovery_share": 2}, "between 0 and 1"),
        ({"watch_window_tokens": 100}, "raise it to"),
        ({"min_repeat": 3}, "Extra inputs"),
    ],
)
def test_bad_config_is_rejected_with_the_fix(kwargs, fix):
    with pytest.raises(ValidationError, match=fix):
        DetectorConfig(**kwargs)


def test_config_is_frozen_and_thresholds_matter():
    with pytest.raises(ValidationError):
        DEFAULT_CONFIG.min_repeats = 5
    text = "Intro. " + "A somewhat longer unit of text. " * 6
    assert detect(text).degenerate
    strict = DetectorConfig(min_repeats=7, watch_window_chars=20_000)
    assert not detect(text, config=strict).degenerate
    counted = "".join(f"{i}. Violin\n" for i in range(1, 40))
    assert detect(counted).rule == "counter_cycle"
    # Without counters the item-set rule still sees one item drawn 39 times...
    assert detect(counted, config=DetectorConfig(counters=False)).rule == "item_set"
    # ...and with neither rule nothing does.
    no_items = DetectorConfig(counters=False, item_sets=False)
    assert not detect(counted, config=no_items).degenerate


# --- the shapes real SmolLM2 outputs loop in (issue 13) ------------------------------


COLOURS = ["Blue", "Green", "Red", "White", "Black", "Purple", "Pink"]
TREES = (
    "Oak Elm Pine Birch Maple Cedar Spruce Larch Beech Alder Aspen Poplar Willow Hazel Holly"
    " Yew Fir Hemlock Cypress Juniper Walnut Chestnut Hickory Magnolia Sequoia"
).split()


def SHIFTING(items: list[str], n: int) -> list[str]:
    rng = random.Random(13)
    return [rng.choice(items) for _ in range(n)]


@pytest.mark.parametrize(
    "text",
    [
        # a few items in shifting order (no period: the cycle search cannot see it)
        ", ".join(SHIFTING(["Austria", "Germany"], 20)),
        "\n".join(SHIFTING(["Cello", "Violin", "Acoustic Guitar"], 40)),
        "".join(
            f"{i}. {c}\n" for i, c in enumerate(SHIFTING(["Hungary", "Croatia", "Poland"], 27), 1)
        )
        + "\nThese are the countries.",
        # three short items cycling in a short answer
        "1. Cloud\n"
        + "".join(f"{i}. {x}\n" for i, x in enumerate(["Sun", "Moon", "Star"] * 3 + ["Sun"], 2)),
        # seven colours over 24 lines (0.29 distinct per item: the labelling rule's 0.3)
        "Here are 50 colours:\n\n"
        + "".join(f"{i}. {COLOURS[(i * 3 + i // 7) % 7]}\n" for i in range(1, 25)),
        # the same row with a number drifting in it (digit-blind items)
        "".join(f"| Caravaggio | {1610 + i * i % 7} | Caravaggio |\n" for i in range(12)),
        # a line with three numbers drifting in it (model, size and size again)
        "".join(
            f"{i}. Intel Core i{3 + i * i % 7} {20 + i * 7 % 13}: A high-end laptop with"
            f" {20 + i * 7 % 13} GB of RAM.\n"
            for i in range(6, 16)
        ),
        # a letter counter
        "".join(f"{c},Electrical,1985\n" for c in "CDEFGHIJKLMNOPQRSTUVW"),
        # a counter that changes width (9 -> 10) in rows drawn from two
        "".join(
            f"| **Player {i}** | **{w}** | {i + 8} |\n"
            for i, w in enumerate(SHIFTING(["Ale", "Bam"], 18), 1)
        ),
        # names changing before one repeated description
        " ".join(
            f"{i}. {name}: A deck of cards with different rules, such as different cards."
            for i, name in enumerate(
                "Siren Black Star Blackstar Comet Rook Nova Ember Dune Flint".split(), 1
            )
        ),
        # ... the same list on one line, then a closing remark on a line of its own
        " ".join(
            f"{i}. {name}: A deck of cards with different rules, such as different cards."
            for i, name in enumerate(
                "Siren Black Star Blackstar Comet Rook Nova Ember Dune Flint".split(), 1
            )
        )
        + "\n\nBlack is the most complex of them, but you can find them here: [the list].",
    ],
)
def test_item_sets_are_loops(text):
    """(SHIFTING draws in a seeded random order: no exact period to find.)"""
    det = detect(text)
    assert det.degenerate and det.rule == "item_set", det


@pytest.mark.parametrize(
    "text",
    [
        # a short answer that is all loop, below the absolute floors
        "1. Blue jay 2. Blue jay 3. Blue jay 4. Blue jay",
        "Je ne m'aime pas de résumer, " * 4,
        # many repeats of a short unit at the end of a longer list
        "".join(f"{i}. {w}\n" for i, w in enumerate("Oak Elm Pine Birch Maple".split(), 1))
        + "".join(f"{i}. Ash\n" for i in range(6, 13))
        + "".join(f"{i}. Ash\n" for i in range(6, 13)),
        # four repeats of a short unit at the end of a long list
        "".join(f"{i}. {w} tree\n" for i, w in enumerate(TREES, 1))
        + "".join(f"{i}. Ash tree\n" for i in range(26, 30)),
        # periods of punctuation, markup or digits
        "Here is the page:\n" + "<!--\n" * 12,
        "The values: " + "1000000, " * 12,
        # dotted counters
        "\n".join(f'4.{i}. "Creative Commons" licences let you share.' for i in range(1, 9)),
        # a unit shorter than the search's 24-character probe, four times in a short answer
        "1. BMW\n2. Mercedes-Benz\n3. Audi\n4. Toyota\n5. BMW\n6. Audi\n7. Audi\n8. Audi\n9. Audi",
    ],
)
def test_short_and_symbol_loops_are_loops(text):
    assert detect(text).degenerate


@pytest.mark.parametrize(
    "text",
    [
        "no, no, no",
        "It was a very very very long day.",
        "Thank you! Thank you! Thank you!",
        "Section one\n" + "-" * 40 + "\nSection two\n" + "=" * 60 + "\n",
        "Intro\n" + ("-" * 40 + "\n") * 5 + "Outro",
        "| a | b | c | d | e | f | g | h |\n|---|---|---|---|---|---|---|---|\n| 1 | 2 | 3 | 4 |",
        # distinct entries sharing a template, short and long
        "".join(
            f"{i}. {w} Tree: 1000\n" for i, w in enumerate("Redwood Elm Pine Alder".split(), 1)
        ),
        "".join(
            f"| {name} | {port} | tcp |\n"
            for name, port in zip(
                "ssh http https smtp imap pop3 ldap dns ntp snmp".split(),
                range(20, 30),
                strict=True,
            )
        ),
        # a log whose messages recur, with timestamps
        "\n".join(
            f"2024-05-01 12:00:{s:02d},{s * 37 % 1000:03d} INFO [worker-{s % 4}] heartbeat ok"
            for s in range(40)
        ),
        "Good morning! Good morning! Good morning!",
        # metrics logs: a counter and measurements change in every row
        "".join(f"Step {s * 100}: loss = {2.5 - s * 0.07:.3f}\n" for s in range(1, 20)),
        "".join(
            f"Epoch {e}: train loss {0.9 - e * 0.05:.3f}, val loss {0.95 - e * 0.04:.3f}\n"
            for e in range(1, 15)
        ),
    ],
)
def test_repetitive_but_legitimate_text_is_clean(text):
    assert not detect(text).degenerate, detect(text)


def test_a_loop_the_token_limit_cut_needs_fewer_repeats():
    """Two rows and most of a third, at the token limit: the budget cut the loop."""
    intro = "| Name | Origin | Notes |\n|---|---|---|\n| **Tomatoes** | **Latin America** | x |\n"
    row = '| **Cucumbers** | **Asia** | "Cucumbers grow on vines in warm places" |\n'
    cut = intro + row * 2 + row[: int(len(row) * 0.8)]
    assert detect(cut, finish_reason="length").degenerate
    # Stopped by itself, or followed by anything after the loop: three repeats stay the bar.
    assert not detect(cut, finish_reason="stop").degenerate
    assert not detect(cut + " and that is all.", finish_reason="length").degenerate
    assert not detect(
        cut, finish_reason="length", config=DetectorConfig(cut_loop_repeats=3)
    ).degenerate


@pytest.mark.parametrize(
    "text",
    [
        # three repeats in a short answer, then the list moves on
        "1. Graphite (Carbon)\n2. Calcium Sulfate (CaSO4)\n3. Calcium Sulfate (CaSO4)\n"
        "4. Calcium Sulfate (CaSO4)\n5. Fluorite (",
        # ... or the repeated line grows and the answer ends
        "1. The King of the World\n2. The Queen of the Sky\n3. The Queen of the Stars\n"
        "4. The Queen of the Stars\n5. The Queen of the Stars with a star in the top corner",
    ],
)
def test_a_short_answer_that_moves_on_is_not_a_loop(text):
    for finish_reason in ("length", "stop"):
        assert not detect(text, finish_reason=finish_reason).degenerate


def test_a_cut_loop_of_many_repeats_needs_half_a_repeat_less():
    """Three repeats and most of a fourth, at the token limit: a loop the budget cut."""
    text = "Here's a simplified guide:\n\n1. **Installation**:\n\n" + "- **Installation**:\n\n" * 2
    assert not detect(text + "- **Inst", finish_reason="length").degenerate  # under half
    assert detect(text + "- **Installat", finish_reason="length").degenerate
    assert not detect(text + "- **Installat", finish_reason="stop").degenerate


def _char_ids(text: str) -> list[int]:
    """One token id per character: the token pass sees exactly the text's cycles."""
    return [ord(c) for c in text]


def test_units_without_letters_count_their_own_repeats():
    # five numbers, not "0" thirty-five times once punctuation and spaces are dropped
    zeros = "Results:\n" + " ".join(["0.000000"] * 5) + "\n"
    assert not detect(zeros, token_ids=_char_ids(zeros)).degenerate
    # a token cycle of punctuation and digits needs min_symbol_repeats, as the text rules do
    for repeats, loop in ((6, False), (14, True)):
        text = "1. " + "1.2.1: " * repeats + "1.2"
        det = detect(text, token_ids=_char_ids(text), finish_reason="length")
        assert det.degenerate is loop, (repeats, det)


def test_floors_scale_with_the_output_length():
    loop = "The cat sat on the red mat. " * 3  # 57 normalized characters, three repeats
    assert detect(loop).degenerate
    # The same three repeats after a long clean answer are under the floors of that length.
    prose = " ".join(f"Sentence number {w} says something new." for w in "abcdefghijklmnopqrst")
    assert not detect(prose + " " + loop).degenerate
    # Turning the scaling off restores the absolute floors.
    fixed = DetectorConfig(short_loop_share=1.0, min_short_loop_chars=120, short_loop_repeats=1000)
    assert not detect(loop, config=fixed).degenerate

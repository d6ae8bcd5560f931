"""Fuzzing the daemon's inputs: every input yields a result or a clear error, never a crash.

The inputs loopd takes from outside: completions (the detector, batch and streaming),
prompt files, config files and HTTP requests. Each target gets arbitrary input and must
answer with a well-formed result or its documented error, never another exception, a
hang or a 500. Hypothesis runs from a fixed seed (``--hypothesis-seed=0`` in pyproject's
pytest options: the same examples on every run and every hash seed, so CI is
deterministic) with no deadline: these tests assert behaviour, never speed.

Inputs that once leaked an exception are pinned as ``@example``s (or swept, where the
depth that breaks depends on the stack), so every run tries them whatever the
strategies happen to draw.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
import math
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple, get_args
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from loopd.backends.local import LocalBackend
from loopd.config import ConfigError, LoopdConfig, load_config
from loopd.daemon import Daemon
from loopd.detect import DEFAULT_CONFIG, LoopWatcher, detect
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.prompts import PromptFileError, read_prompts
from loopd.store import Store
from loopd.types import CLEAN, Detection, Prompt

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Any text a model or a file can hold: control characters included, lone surrogates not
# (they cannot come out of a UTF-8 decode; JSON's \ud800 escapes can, see ANY_JSON).
CHARS = st.characters(exclude_categories=["Cs"])
TEXT = st.text(CHARS, max_size=300)


# --- the detector -----------------------------------------------------------------------


@st.composite
def completions(draw) -> str:
    """Arbitrary text, often ending in a long run of one unit (the case detect looks for)."""
    prefix = draw(TEXT)
    unit = draw(st.text(CHARS, min_size=1, max_size=40))
    repeats = draw(st.sampled_from([0, 1, 2, 3, 10, 100, 1000]))
    tail = draw(st.text(CHARS, max_size=draw(st.sampled_from([0, 5, 200]))))
    return prefix + unit * repeats + tail


@st.composite
def token_ids(draw) -> list[int] | None:
    """None, empty, any ints (negative, beyond 32 bits), or a repeated unit of ids."""
    ints = st.integers(-(2**70), 2**70) | st.integers(0, 50_000)
    prefix = draw(st.lists(ints, max_size=200))
    unit = draw(st.lists(ints, min_size=1, max_size=20))
    repeats = draw(st.sampled_from([0, 1, 5, 50, 500]))
    return draw(st.sampled_from([None, prefix + unit * repeats]))


FINISH_REASONS = st.sampled_from([None, "stop", "length", "repetition", "", "abort"]) | TEXT


def assert_well_formed(det: Detection, text_length: int, token_count: int) -> None:
    """A verdict whose offsets point into the completion it judged."""
    assert isinstance(det, Detection)
    if not det.degenerate:
        assert det == CLEAN
        return
    assert isinstance(det.rule, str) and det.rule
    assert 0.0 <= det.score <= 1.0 and 0.0 <= det.loop_fraction <= 1.0
    if det.loop_start is not None:
        assert 0 <= det.loop_start <= text_length
    if det.loop_start_token is not None:
        assert 0 <= det.loop_start_token <= token_count
    if det.period is not None:
        assert det.period >= 1


@FUZZ
@given(completions(), token_ids(), FINISH_REASONS)
def test_detect_judges_any_completion(text: str, ids: list[int] | None, finish: str | None):
    det = detect(text, token_ids=ids, finish_reason=finish)
    event(f"rule: {det.rule}")
    assert_well_formed(det, len(text), len(ids or []))
    if finish in DEFAULT_CONFIG.repetition_finish_reasons:
        assert det.degenerate  # the server said it stopped a loop: one by definition
    assert detect(text, token_ids=ids, finish_reason=finish) == det  # pure


@st.composite
def streams(draw) -> list[int] | list[str]:
    """One stream per watcher, as documented: all token ids (any int: negative, beyond
    Unicode's 0x10FFFF, beyond 64 bits), or all text pieces."""
    ids = st.integers() | st.integers(-3, 0x110003) | st.integers(0, 300)
    pieces = st.text(CHARS, max_size=12)
    element = draw(st.sampled_from([ids, pieces]))
    prefix = draw(st.lists(element, max_size=200))
    unit = draw(st.lists(element, min_size=1, max_size=12))
    return prefix + unit * draw(st.sampled_from([0, 1, 10, 100])) + draw(st.lists(element))


def watch(stream: list[int] | list[str]) -> Detection | None:
    watcher = LoopWatcher()
    for piece in stream:
        watcher.feed(piece)
    return watcher.finish()


@FUZZ
@given(streams())
@example([-1])
@example([0x110000 + 5])
@example([-1, -(2**70), 0x110000 + 5] * 100)
def test_the_watcher_takes_any_stream(stream: list[int] | list[str]):
    """Fires at most once and then latches; offsets are within what it was fed; ids
    outside Unicode's range count as their value modulo 0x110000."""
    watcher, fired, fed = LoopWatcher(), None, 0
    for piece in stream:
        det = watcher.feed(piece)
        if fired is not None:
            assert det is fired  # latched
            continue
        fed += 1 if isinstance(piece, int) else len(piece)
        fired = det
    assert watcher.consumed == fed
    final = watcher.finish()
    event("fired" if final is not None else "quiet")
    assert final is fired or fired is None
    if stream and isinstance(stream[0], int):
        assert watch([i % 0x110000 for i in stream]) == final  # ids wrap, as documented
    if final is None:
        return
    assert final.degenerate
    if stream and isinstance(stream[0], str):
        assert final.loop_start is not None and 0 <= final.loop_start <= fed
    else:
        assert final.loop_start_token is not None and 0 <= final.loop_start_token <= fed


# --- prompt files -----------------------------------------------------------------------


def json_values(text: st.SearchStrategy[str], integers: st.SearchStrategy[int]):
    return st.recursive(
        st.none() | st.booleans() | integers | st.floats() | text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
        max_leaves=12,
    )


# JSON a good prompt line may carry in its unknown fields.
JSON_VALUES = json_values(st.text(CHARS, max_size=20), st.integers(-(2**63), 2**63))
# Any text JSON can hold: json.dumps writes a lone surrogate as a "\ud800" escape.
ANY_TEXT = st.text(st.characters(), max_size=20) | st.tuples(
    st.text(CHARS, max_size=5), st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]), TEXT
).map("".join)
ANY_JSON = json_values(ANY_TEXT, st.integers())

CHAT_MESSAGE = st.fixed_dictionaries({"role": TEXT, "content": TEXT}, optional={"name": TEXT})
ANY_MESSAGE = st.fixed_dictionaries(
    {"role": TEXT | ANY_JSON, "content": TEXT | ANY_JSON}, optional={"name": ANY_JSON}
) | st.dictionaries(st.sampled_from(["role", "content", "name"]), TEXT | ANY_JSON)


@st.composite
def prompt_rows(draw) -> dict[str, Any]:
    """An object shaped like a prompt line: often an id and one of prompt and messages (so
    the checks past the first are reached), else keys missing or both; odd values of any
    JSON type (lone surrogates included), unknown keys."""
    keys = {
        "id": st.text(CHARS, min_size=1, max_size=5) | st.integers() | ANY_TEXT | ANY_JSON,
        "prompt": TEXT | ANY_TEXT | ANY_JSON,
        "messages": st.lists(CHAT_MESSAGE | ANY_MESSAGE | ANY_JSON, max_size=3) | ANY_JSON,
        "reference": st.none() | TEXT | ANY_TEXT | ANY_JSON,
        "kind": st.none() | TEXT | ANY_TEXT | ANY_JSON,
        "extra": ANY_JSON,
    }
    shape = draw(st.sampled_from([["id", "prompt"], ["id", "messages"], []]))
    others = ["reference", "kind", "extra"] if shape else sorted(keys)
    chosen = shape + draw(st.lists(st.sampled_from(others), unique=True))
    return {key: draw(keys[key]) for key in chosen}


GOOD_ROWS = st.builds(
    dict.__or__,
    st.fixed_dictionaries(
        {"id": st.text(CHARS, min_size=1, max_size=20) | st.integers()},
        optional={"reference": st.none() | TEXT, "kind": st.none() | TEXT, "extra": JSON_VALUES},
    ),
    st.fixed_dictionaries({"prompt": TEXT})
    | st.fixed_dictionaries({"messages": st.lists(CHAT_MESSAGE, min_size=1, max_size=3)}),
)


def prompt_of(row: dict[str, Any]) -> Prompt:
    """The Prompt a good row reads as, as documented."""
    messages = row.get("messages")
    return Prompt(
        id=str(row["id"]),
        text=row.get("prompt"),
        messages=None if messages is None else tuple(messages),
        reference=row.get("reference"),
        kind=row.get("kind"),
    )


# Lines no JSON parser of Python's takes: nested past the recursion limit, a number past
# int's 4300 digits, or a line that is not UTF-8.
HOSTILE_LINES = (
    st.sampled_from([10, 1000, 100_000]).map(lambda n: "[" * n)
    | st.sampled_from([2000, 100_000]).map(lambda n: '{"id": 1, "x": ' + "[" * n + "]" * n + "}")
    | st.integers(4000, 6000).map(lambda n: f'{{"id": 1, "prompt": "a", "n": {"9" * n}}}')
    | st.integers(4000, 6000).map(lambda n: f'{{"id": {"9" * n}, "prompt": "a"}}')
).map(str.encode) | st.binary(max_size=12).filter(lambda b: b"\r" not in b and b"\n" not in b)


class PromptFile(NamedTuple):
    data: bytes
    prompts: list[Prompt] | None  # what it must read as ([]: refused); None: not known


@st.composite
def prompt_files(draw) -> PromptFile:
    """Lines of prompts, prompt-like objects, other JSON, junk, bytes that are not UTF-8
    and blanks, in any line ending. A quarter of the files hold only good lines (and
    blanks) and must read as exactly their prompts; half hold good and prompt-like lines,
    so each check on a prompt's fields is reached."""
    good = GOOD_ROWS | st.sampled_from(["", "  "])
    line = (
        good
        | prompt_rows().map(json.dumps)
        | ANY_JSON.map(json.dumps)
        | st.text(CHARS.filter(lambda c: c not in "\r\n"), max_size=40)
        | st.sampled_from(["", " ", "\t", "{", '{"id": 1,', "[]", "null"])
        | HOSTILE_LINES
    )
    kind = draw(st.sampled_from(["good", "prompt-like", "prompt-like", "any"]))
    only_good = kind == "good"
    if kind == "prompt-like":
        line = good | prompt_rows().map(json.dumps)
    rows = draw(st.lists(good if only_good else line, max_size=8))
    lines = [
        row if isinstance(row, bytes) else (json.dumps(row) if isinstance(row, dict) else row)
        for row in rows
    ]
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    data = ending.encode().join(
        line if isinstance(line, bytes) else line.encode() for line in lines
    ) + draw(st.sampled_from([b"", ending.encode()]))
    prompts = [prompt_of(row) for row in rows if isinstance(row, dict)]
    return PromptFile(data, prompts if only_good else None)


def non_blank_lines(data: bytes) -> int:
    """Lines with content, split as the loader's text file splits them."""
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline=None)
    return sum(1 for line in text if line.strip())


def assert_prompt(prompt: Prompt) -> None:
    """A non-empty id, exactly one of text (a string) and messages (a non-empty tuple of
    {role, content} strings), reference and kind None or strings; all of it UTF-8 text."""
    assert isinstance(prompt, Prompt)
    assert isinstance(prompt.id, str) and prompt.id
    if prompt.messages is None:
        assert isinstance(prompt.text, str)
    else:
        assert prompt.text is None
        assert isinstance(prompt.messages, tuple) and prompt.messages
        for message in prompt.messages:
            assert isinstance(message, dict)
            assert isinstance(message["role"], str) and isinstance(message["content"], str)
    assert prompt.reference is None or isinstance(prompt.reference, str)
    assert prompt.kind is None or isinstance(prompt.kind, str)
    json.dumps(dataclasses.asdict(prompt), ensure_ascii=False).encode()  # no lone surrogate


REFUSED: list[Prompt] = []


@FUZZ
@given(prompt_files() | st.text(CHARS, max_size=400).map(lambda t: PromptFile(t.encode(), None)))
@example(PromptFile(b"\xff\n", REFUSED))
@example(PromptFile(b'{"id": 1, "prompt": "a"}\n\xff\n', REFUSED))
@example(PromptFile(b'{"id": 1, "messages": 5}', REFUSED))
@example(PromptFile(b'{"id": 1, "messages": null}', REFUSED))
@example(PromptFile(b'{"id": 1, "messages": []}', REFUSED))
@example(PromptFile(b'{"id": 1, "messages": [{"role": "user", "content": 5}]}', REFUSED))
@example(PromptFile(b'{"id": 1, "messages": [{"role": null, "content": "a"}]}', REFUSED))
@example(PromptFile(b"[" * 100_000, REFUSED))
@example(PromptFile(b'{"id": 1, "prompt": "a", "n": ' + b"9" * 5000 + b"}", REFUSED))
@example(PromptFile(b'{"id": 1, "prompt": 5}', REFUSED))
@example(PromptFile(b'{"id": 1, "prompt": "a", "reference": 5}', REFUSED))
@example(PromptFile(b'{"id": 1, "prompt": "a", "kind": ["k"]}', REFUSED))
@example(PromptFile(b'{"id": 1, "prompt": "\\ud800"}', REFUSED))
@example(PromptFile(b'{"id": "", "prompt": "a"}', REFUSED))
@example(PromptFile(b'{"id": true, "prompt": "a"}', REFUSED))
@example(PromptFile(b'{"id": 1.5, "prompt": "a"}', REFUSED))
@example(PromptFile(b'{"id": 1, "prompt": "\\ud83d\\ude00"}', [Prompt(id="1", text="\U0001f600")]))
def test_a_prompt_file_is_read_or_refused_with_its_line(tmp_path_factory, file: PromptFile):
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_bytes(file.data)
    try:
        prompts = read_prompts(path)
    except PromptFileError as error:
        event("refused")
        assert re.match(rf"{re.escape(str(path))}(:\d+)?: \S", str(error)), error
        assert not file.prompts, f"good prompts refused: {error}"
        return
    event("read")
    assert file.prompts is None or prompts == file.prompts
    assert len(prompts) == non_blank_lines(file.data)  # a bad line is refused, never skipped
    for prompt in prompts:
        assert_prompt(prompt)


def test_a_prompt_nested_to_any_depth_is_read_or_refused(tmp_path):
    """Every depth from none to past the recursion limit: where that limit bites depends on
    the stack the loader runs on, so no one depth (as an @example) would pin it."""
    path = tmp_path / "p.jsonl"
    for depth in range(sys.getrecursionlimit() + 10):
        path.write_text('{"id": 1, "prompt": "a", "x": ' + "[" * depth + "]" * depth + "}\n")
        try:
            prompts = read_prompts(path)
        except PromptFileError as error:
            assert str(error).startswith(f"{path}:1: "), error
            continue
        except Exception as error:  # the leak is the finding
            pytest.fail(f"nested {depth} deep: {error!r} leaked from read_prompts")
        assert prompts == [Prompt(id="1", text="a")], depth


# --- config files -----------------------------------------------------------------------


def toml_string(text: str) -> str:
    """A TOML basic string (tomli_w is not a dependency; this is all the tests need)."""
    escaped = "".join(
        "\\" + c if c in '"\\' else f"\\u{ord(c):04X}" if ord(c) < 0x20 or c == "\x7f" else c
        for c in text
    )
    return f'"{escaped}"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


def toml_document(table: dict[str, Any]) -> str:
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in table.items())


TOML_TEXT = st.text(CHARS, max_size=30)  # NUL included: a path must refuse it by name
TOML_SCALARS = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.integers(-2, 100)
    | st.floats()
    | st.floats(0, 1)
    | TOML_TEXT
    | st.sampled_from(["local", "vllm", "json", "text", "reference", "resample", "truncate"])
    | st.sampled_from(["\x00", "a\x00b", "prompts/\x00.jsonl"])
    | st.dates()
    | st.datetimes()
)
TOML_VALUES = st.recursive(
    TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TOML_TEXT, inner, max_size=3),
    max_leaves=6,
)


def sections(model: type[BaseModel]) -> dict[str, type[BaseModel] | None]:
    """The model's fields: a nested section's model, or None for a plain value."""
    nested = {}
    for name, field in model.model_fields.items():
        kind = field.annotation
        nested[name] = kind if isinstance(kind, type) and issubclass(kind, BaseModel) else None
    return nested


@st.composite
def config_tables(draw, model: type[BaseModel] = LoopdConfig) -> dict[str, Any]:
    """A table with some of the model's own keys (so validation goes deep) and maybe an
    unknown one (the empty key too), each holding any TOML value or, for a section, a
    table of its own."""
    fields = sections(model)
    chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True, max_size=4))
    table = {}
    for name in chosen:
        section = fields[name]
        values = TOML_VALUES if section is None else config_tables(section) | TOML_VALUES
        table[name] = draw(values)
    if draw(st.booleans()):
        table[draw(st.just("") | TOML_TEXT)] = draw(TOML_VALUES)
    return table


def where(parts: tuple[str, ...]) -> str:
    """A field's path as a problem names it: dotted, each part quoted if any is empty."""
    return ".".join(parts if all(parts) else map(repr, parts))


def field_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every field path of the schema: ``(training,)``, ``(training, max_length)``, …"""
    paths = set()
    for name, section in sections(model).items():
        paths.add((*prefix, name))
        if section is not None:
            paths |= field_paths(section, (*prefix, name))
    return paths


def key_paths(value: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key path written in a table, list indices included (pydantic's loc)."""
    children = value.items() if isinstance(value, dict) else []
    if isinstance(value, list):
        children = enumerate(value)
    paths = set()
    for key, child in children:
        path = (*prefix, str(key))
        paths |= {path} | key_paths(child, path)
    return paths


SCHEMA_PATHS = field_paths(LoopdConfig)


def names_a_field(problem: str, written: set[tuple[str, ...]]) -> bool:
    """The problem starts with the field it is about: one of the schema's or one written."""
    return any(
        problem.startswith(name) and problem[len(name) : len(name) + 1] in (":", ".", "=", " ")
        for name in map(where, SCHEMA_PATHS | written)
    )


def holds_path(annotation: Any) -> bool:
    return annotation is Path or any(holds_path(arg) for arg in get_args(annotation))


def path_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The schema's fields that hold a path (or a list of them)."""
    paths = set()
    for name, field in model.model_fields.items():
        section = sections(model)[name]
        if section is not None:
            paths |= path_fields(section, (*prefix, name))
        elif holds_path(field.annotation):
            paths.add((*prefix, name))
    return paths


PATH_FIELDS = path_fields(LoopdConfig)
LIST_FIELDS = {("sampling", "prompts")}  # the one path field that takes a list


def written_at(table: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(table, dict) or key not in table:
            return None
        table = table[key]
    return table


def nul_paths(table: dict[str, Any]) -> set[tuple[str, ...]]:
    """The path fields the table gives a string with a NUL in (or, for a list field, a
    list holding one). A list where one path belongs, or one string where a list
    belongs, is refused for its type instead."""
    found = set()
    for path in PATH_FIELDS:
        value = written_at(table, path)
        if (path in LIST_FIELDS) != isinstance(value, list):
            continue  # the wrong shape: refused for its type, NUL or not
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "\x00" in v for v in values):
            found.add(path)
    return found


def unknown_keys(table: Any, model: type[BaseModel] = LoopdConfig, prefix=()) -> set[tuple]:
    """The keys the table writes that the schema has no field for, in sections too."""
    fields, found = sections(model), set()
    for key, value in table.items() if isinstance(table, dict) else []:
        if key not in fields:
            found.add((*prefix, key))
        elif fields[key] is not None:
            found |= unknown_keys(value, fields[key], (*prefix, key))
    return found


def load(tmp_path_factory: pytest.TempPathFactory, data: str | bytes, suffix: str = ".toml"):
    path = tmp_path_factory.mktemp("config") / f"loopd{suffix}"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return load_config(path)


@FUZZ
@given(config_tables())
@example({"state_dir": "a\x00b"})
@example({"sampling": {"prompts": ["p.jsonl", "\x00"]}, "gate": {"heldout": "h\x00"}})
@example({"": 1})
@example({"training": {"": 1}, "daemon": {"port": 1, "": 2}})
@example({"daemon": {}, "deploy": {}, "detector": {}, "state_dir": ["\x00"]})
@example({"sampling": {"prompts_per_round": False, "prompts": "\x00"}})
def test_any_config_table_loads_or_names_its_bad_field(tmp_path_factory, table: dict[str, Any]):
    try:
        config = load(tmp_path_factory, toml_document(table))
    except ConfigError as error:
        event("refused")
        assert error.problems
        for problem in error.problems:
            assert not problem.startswith("not valid TOML"), problem  # the writer's fault
            assert names_a_field(problem, key_paths(table)), problem
        for path in nul_paths(table):
            assert any(p.startswith(where(path)) and "NUL" in p for p in error.problems), path
        for key in unknown_keys(table):
            assert any(p.startswith(f"{where(key)}: unknown key;") for p in error.problems), key
        return
    event("loaded")
    assert not nul_paths(table) and not unknown_keys(table)
    assert isinstance(config, LoopdConfig) and config.state_dir.is_absolute()


@st.composite
def config_texts(draw) -> bytes:
    """Any text, a config document cut anywhere (mid-string, mid-table, mid-key), or
    bytes that are not UTF-8 text."""
    document = draw(config_tables().map(toml_document))
    cut = draw(st.integers(0, len(document)))
    text = draw(st.just(document[:cut]) | st.text(CHARS, max_size=200)).encode()
    bad = st.sampled_from([b"\xff", b"\xfe", b"\x80", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88"])
    junk = st.builds(bytes.__add__, bad, st.binary(max_size=3))
    return draw(st.just(text) | st.builds(lambda j: text[:cut] + j + text[cut:], junk))


def utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(st.sampled_from([".toml", ".yaml", ".yml"]), config_texts())
@example(".toml", b"\xff\xfe")
@example(".yaml", b"\xff\xfe")
@example(".toml", b'"" = 1')
@example(".yaml", b'"": 1')
@example(".toml", b'state_dir = "a\\u0000b"')
@example(".yaml", b'state_dir: "a\\0b"')
def test_any_config_text_loads_or_is_refused(tmp_path_factory, suffix: str, data: bytes):
    try:
        config = load(tmp_path_factory, data, suffix)
    except ConfigError as error:
        event(f"refused {suffix}")
        assert error.problems and all(isinstance(p, str) and p for p in error.problems)
        if not utf8(data):
            assert error.problems[0].startswith("not UTF-8 text"), error.problems
        return
    event(f"loaded {suffix}")
    assert utf8(data) and isinstance(config, LoopdConfig)


# --- the daemon's HTTP endpoints --------------------------------------------------------

ROUTES = [
    "/metrics", "/healthz", "/readyz", "/status", "/adapters", "/admin/adapters/rollback",
    "/admin/adapters/unpin", "/admin/reload", "/admin/pause", "/admin/resume", "/admin/rounds",
]  # fmt: skip
VERBS = ["", "/promote", "/pin", "/rollback", "/unpin", "/nope"]
# What a client can put in a request target: visible ASCII, but no "#" (a fragment
# stays in the client; httpx refuses it).
TARGET_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="#")


# Versions past SQLite's 64-bit INTEGER ("9" * 20) are no version: a 404, as any unknown.
VERSIONS = st.integers(min_value=0).map(str) | st.sampled_from(
    ["-1", "+1", "01", "1.5", "", str(2**63 - 1), str(2**63), "9" * 20, str(2**64), "9" * 5000]
)
VERSIONED = st.builds(
    lambda prefix, v, verb: f"{prefix}/adapters/{v}{verb}",
    st.sampled_from(["", "/admin"]),
    VERSIONS,
    st.sampled_from(VERBS),
)
TARGETS = st.sampled_from(ROUTES) | VERSIONED
JUNK_TARGETS = (
    st.builds(lambda r, q: f"{r}?{q}", st.sampled_from(ROUTES), st.text(TARGET_CHARS))
    | st.text(TARGET_CHARS, max_size=60).map(lambda t: "/" + t)
    | st.text(CHARS, max_size=30).map(lambda t: "/" + quote(t.encode()))
)
# What h11 lets a client send as a header value: visible ASCII, no space at either end.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40).map(
    str.strip
)
WRONG_TOKENS = st.none() | HEADER_TEXT.map(lambda t: f"Bearer {t}".strip()) | HEADER_TEXT
BODIES = st.binary(max_size=2048) | st.integers(0, 1 << 20).map(lambda n: b"{" * n)


class Request(NamedTuple):
    method: str
    target: str
    authorization: str | None
    body: bytes


@st.composite
def http_requests(draw, token: str) -> Request:
    """Four kinds alike: an admin verb with the right token (a route or any version with
    any verb), a read, a method the daemon has no handler for, and anything at all."""
    kind = draw(st.sampled_from(["admin", "read", "odd", "any"]))
    if kind == "admin":
        return Request("POST", draw(TARGETS), f"Bearer {token}", draw(BODIES))
    if kind == "read":
        return Request("GET", draw(TARGETS | JUNK_TARGETS), draw(WRONG_TOKENS), draw(BODIES))
    method = draw(st.sampled_from(["PUT", "DELETE", "HEAD", "PATCH", "OPTIONS"]))
    if kind == "any":
        method = draw(st.sampled_from(["GET", "POST", method]))
    target = draw(TARGETS | JUNK_TARGETS)
    return Request(method, target, draw(WRONG_TOKENS | st.just(f"Bearer {token}")), draw(BODIES))


@pytest.fixture
def daemon_url(daemon_config: LoopdConfig) -> Iterator[str]:
    """A real daemon on the embedded model; its jobs' intervals are an hour, so after the
    first sampling round the requests have it to themselves."""
    inputs = resolve_inputs(daemon_config)
    backend = LocalBackend(inputs.base_model, threads=1)
    loop = Loop(daemon_config, inputs, backend=backend, store=Store(daemon_config.db_path))
    daemon = Daemon(loop)
    daemon.start()
    try:
        yield f"http://127.0.0.1:{daemon.port}"
    finally:
        daemon.stop()


def test_a_version_too_long_for_an_int_is_a_404(daemon_config: LoopdConfig, daemon_url: str):
    headers = {"Authorization": f"Bearer {daemon_config.daemon.admin_token.get_secret_value()}"}
    with httpx.Client(base_url=daemon_url, headers=headers, timeout=60) as client:
        for method, target in [
            ("GET", f"/adapters/{'9' * 5000}"),
            ("POST", f"/admin/adapters/{'9' * 5000}/promote"),
            ("POST", f"/admin/adapters/{'9' * 5000}/pin"),
        ]:
            response = client.request(method, target)
            assert response.status_code == 404, (method, response.text)
        assert client.get("/healthz").status_code == 200


def test_the_daemon_answers_any_request(daemon_config: LoopdConfig, daemon_url: str) -> None:
    """Every request gets a well-formed response: 4xx for a bad one (405 for a method a
    route does not take), 502 only for serving that failed; and the daemon keeps
    answering /healthz after each."""
    token = daemon_config.daemon.admin_token.get_secret_value()
    admin = f"Bearer {token}"
    client = httpx.Client(timeout=60)

    @settings(max_examples=100, deadline=None)
    @given(http_requests(token))
    @example(Request("POST", f"/admin/adapters/{'9' * 20}/promote", admin, b""))
    @example(Request("POST", f"/admin/adapters/{'9' * 20}/pin", admin, b"{}"))
    @example(Request("POST", f"/admin/adapters/{2**63}/promote", admin, b""))
    @example(Request("POST", "/admin/reload", admin, b"{" * 100_000))
    @example(Request("GET", f"/adapters/{'9' * 20}", None, b""))
    def answers(request: Request) -> None:
        auth = request.authorization
        headers = {} if auth is None else {"Authorization": auth}
        url = httpx.URL(daemon_url).copy_with(raw_path=request.target.encode())
        response = client.request(request.method, url, headers=headers, content=request.body)
        status = response.status_code
        event(f"{request.method} {status}")
        assert 200 <= status < 600 and response.http_version.startswith("HTTP/1.")
        assert status < 500 or (request.method == "POST" and status == 502), response.text
        if request.method not in ("GET", "HEAD", "POST"):
            assert status in (404, 405), response.text
        wrong_key = request.method == "POST" and auth != admin
        if request.target.startswith("/admin/") and wrong_key and status != 404:
            assert status == 401, response.text  # the token is checked before anything else
        routes = {"GET": r"/adapters/(\d+)", "POST": r"/admin/adapters/(\d+)/(?:promote|pin)"}
        version = re.fullmatch(routes.get(request.method, "$^"), request.target)
        let_in = request.method == "GET" or auth == admin
        if version and (len(version[1]) > 30 or int(version[1]) >= 2**63) and let_in:
            assert status == 404, response.text  # no such version, not a 500
        assert client.get(f"{daemon_url}/healthz").status_code == 200

    with client:
        answers()
        assert client.get(f"{daemon_url}/status").status_code == 200

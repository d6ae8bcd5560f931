"""Any body a client can send is a validated call or a 4xx naming what is wrong; never a
crash (hypothesis, from the fixed seed pyproject sets)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from loopd.proxy.calls import ProxyCall, ProxyError, parse_call
from loopd.proxy.ingest import parse_batch

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "model": JSON | st.just("loopd"),
        "prompt": JSON | st.text(),
        "messages": JSON | st.lists(st.fixed_dictionaries({"role": st.text(), "content": JSON})),
        "max_tokens": JSON | st.integers(-5, 5000),
        "n": JSON | st.integers(-2, 40),
        "stream": JSON,
        "temperature": JSON,
        "seed": JSON | st.integers(),
    },
)
BODIES = (
    st.binary(max_size=256)
    | FIELDS.map(lambda d: json.dumps(d).encode())
    | JSON.map(lambda v: json.dumps(v).encode())
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["completions", "chat"]), BODIES)
def test_every_body_is_a_call_or_a_clear_4xx(route: str, body: bytes) -> None:
    try:
        call = parse_call(route, body)
    except ProxyError as error:
        assert 400 <= error.status < 500 and str(error)
        assert error.body()["error"]["message"] == str(error)
        return
    assert isinstance(call, ProxyCall)
    assert isinstance(call.body["model"], str) and call.body["model"]
    assert 1 <= call.choices <= 16
    (call.prompt.text or "").encode("utf-8")  # storable


SAMPLE = st.fixed_dictionaries(
    {},
    optional={
        "prompt": JSON | st.text(),
        "messages": JSON | st.lists(st.fixed_dictionaries({"role": st.text(), "content": JSON})),
        "completion": JSON | st.text(),
        "finish_reason": JSON | st.text(),
        "token_ids": JSON | st.lists(st.integers(-3, 1 << 33)),
        "prompt_id": JSON | st.text(),
    },
)
BATCHES = (
    st.binary(max_size=256)
    | JSON.map(lambda v: json.dumps(v).encode())
    | st.lists(SAMPLE, max_size=4).map(lambda s: json.dumps({"samples": s}).encode())
)


@settings(max_examples=400, deadline=None)
@given(BATCHES)
def test_every_ingest_body_is_samples_or_a_clear_400(body: bytes) -> None:
    try:
        rows = parse_batch(body, max_samples=3)
    except ProxyError as error:
        assert error.status == 400 and str(error) and error.param
        return
    assert 1 <= len(rows) <= 3
    for prompt, completion in rows:
        assert (prompt.text is None) != (prompt.messages is None)
        assert completion.prompt_id == prompt.id
        completion.text.encode("utf-8")


def test_a_lone_surrogate_in_a_sample_is_a_400() -> None:
    body = (
        b'{"samples": [{"messages": [{"role": "user", "content": "\\ud800"}], "completion": "x"}]}'
    )
    try:
        parse_batch(body, max_samples=3)
    except ProxyError as error:
        assert error.status == 400 and "Invalid JSON" in str(error)
    else:
        raise AssertionError("a lone surrogate was accepted")

"""Any body a client can send is a validated call or a 4xx naming what is wrong; never a
crash (hypothesis, from the fixed seed pyproject sets)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from loopd.proxy.calls import ProxyCall, ProxyError, parse_call

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

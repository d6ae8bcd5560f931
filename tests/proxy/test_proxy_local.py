"""The proxy in front of the in-process engine, driven by the official ``openai`` client:
answers equal the engine's own, streams included; every completion is stored; refused
requests store nothing; a looping stream is stopped with the documented finish reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import openai
import pytest
from pydantic import SecretStr

from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.metrics import Metrics
from loopd.proxy import ProxyServer
from loopd.proxy.stream import STOP_REASON, STOPPED
from loopd.store import Store
from loopd.types import GenerationRequest, Prompt

KEY = "proxy-client-key-0123456789"
MAX_TOKENS = 48


@dataclass
class Running:
    proxy: ProxyServer
    loop: Loop
    metrics: Metrics

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.proxy.url + "/v1", api_key=key, max_retries=0,
                             timeout=300)  # fmt: skip

    def samples(self) -> int:
        self.proxy.recorder.flush()
        return self.loop.store.counts()["samples"]

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0


def proxied(config: LoopdConfig, **proxy: object) -> Iterator[Running]:
    cfg = config.model_copy(
        update={"proxy": config.proxy.model_copy(update={"enabled": True, "port": 0,
                                                         "api_keys": [SecretStr(KEY)], **proxy})}
    )  # fmt: skip
    inputs = resolve_inputs(cfg)
    loop = Loop(
        cfg, inputs, backend=LocalBackend(inputs.base_model, threads=1), store=Store(cfg.db_path)
    )
    metrics = Metrics(loop.store)
    server = ProxyServer(loop, metrics.registry)
    server.start()
    try:
        yield Running(server, loop, metrics)
    finally:
        server.stop()


@pytest.fixture
def running(config: LoopdConfig) -> Iterator[Running]:
    yield from proxied(config)


@pytest.fixture
def stopping(config: LoopdConfig) -> Iterator[Running]:
    yield from proxied(config, loop_stopping="stop")


def train_prompts(running: Running) -> list[Prompt]:
    return list(running.loop.inputs.train_prompts)


def direct(running: Running, prompt: Prompt) -> str:
    request = GenerationRequest(Prompt(prompt.id, text=prompt.text), max_tokens=MAX_TOKENS)
    [[completion]] = running.loop.backend.generate([request])
    return completion.text


def looping_prompt(running: Running) -> Prompt:
    for prompt in train_prompts(running):
        request = GenerationRequest(prompt, max_tokens=MAX_TOKENS)
        [[completion]] = running.loop.backend.generate([request])
        if running.loop.detect(completion).degenerate:
            return prompt
    raise AssertionError("the embedded model looped on none of its prompts")


def test_answers_equal_the_engine_and_every_one_is_stored(running: Running) -> None:
    client = running.client()
    prompts = train_prompts(running)[:4]
    for prompt in prompts:
        answer = client.completions.create(
            model="loopd", prompt=prompt.text, max_tokens=MAX_TOKENS, temperature=0
        )
        assert answer.choices[0].text == direct(running, prompt)
        assert answer.usage.completion_tokens > 0
    assert running.samples() == len(prompts)
    assert running.metric("loopd_proxy_recorded_total") == len(prompts)
    [card] = client.models.list().data
    assert card.id == "loopd"


def test_a_stream_says_what_the_answer_says(running: Running) -> None:
    client = running.client()
    prompt = train_prompts(running)[0]
    stream = client.completions.create(
        model="loopd", prompt=prompt.text, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    chunks = list(stream)
    assert len(chunks) > 2
    assert "".join(c.choices[0].text for c in chunks) == direct(running, prompt)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert running.samples() == 1


def test_a_stale_version_name_reaches_the_live_model(running: Running) -> None:
    answer = running.client().completions.create(
        model="loopd-v0007", prompt=train_prompts(running)[0].text, max_tokens=4, temperature=0
    )
    assert answer.choices[0].text
    assert running.samples() == 1


def test_refused_requests_get_4xx_and_store_nothing(running: Running) -> None:
    url = running.proxy.url + "/v1/completions"
    good = {"model": "loopd", "prompt": "doc:", "max_tokens": 4}
    auth = {"Authorization": f"Bearer {KEY}"}
    with pytest.raises(openai.AuthenticationError):
        running.client(key="wrong-key-0123456789").completions.create(**good)
    with pytest.raises(openai.NotFoundError, match="not served here"):
        running.client().completions.create(**(good | {"model": "gpt-4"}))
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        running.client().completions.create(**(good | {"max_tokens": 0}))
    cases = [
        (b"{not json", 400, None),
        (json.dumps(good | {"n": 99}).encode(), 400, "n"),
        (json.dumps(good | {"prompt": {"a": 1}}).encode(), 400, "prompt"),
        (json.dumps(good | {"prompt": "x" * (2 << 20)}).encode(), 413, None),
        (json.dumps({"prompt": "doc:"}).encode(), 400, "model"),
        (b'{"model": "loopd", "prompt": "\\ud800"}', 400, "prompt"),
    ]
    for body, status, param in cases:
        response = httpx.post(url, content=body, headers=auth, timeout=60)
        assert response.status_code == status, response.text
        assert response.json()["error"]["param"] == param
    assert httpx.post(url, json=good, timeout=60).status_code == 401  # no key at all
    assert httpx.get(url, headers=auth, timeout=60).status_code == 405
    assert running.samples() == 0
    assert running.metric("loopd_proxy_requests_total", {"route": "completions", "status": "413"})


def test_a_looping_stream_is_stopped_and_its_loop_still_stored(stopping: Running) -> None:
    prompt = looping_prompt(stopping)
    stream = stopping.client().completions.create(
        model="loopd", prompt=prompt.text, max_tokens=MAX_TOKENS, temperature=0, stream=True
    )
    chunks = list(stream)
    last = chunks[-1].choices[0]
    assert (last.finish_reason, last.model_extra.get("stop_reason")) == (STOPPED, STOP_REASON)
    sent = "".join(c.choices[0].text for c in chunks)
    assert len(sent) < len(direct(stopping, prompt))  # cut at the loop, not at the limit
    assert stopping.samples() == 1
    [sample] = stopping.loop.store.unpaired_degenerate()
    assert sample.completion.finish_reason == STOPPED and sample.completion.text == sent
    assert stopping.metric("loopd_proxy_stream_loops_total", {"action": "stop"}) == 1


def test_the_daemon_serves_the_proxy_and_stores_its_queue_on_stop(
    daemon_config: LoopdConfig,
) -> None:
    from loopd.daemon import Daemon

    cfg = daemon_config.model_copy(
        update={"proxy": daemon_config.proxy.model_copy(update={"enabled": True, "port": 0})}
    )
    inputs = resolve_inputs(cfg)
    loop = Loop(
        cfg, inputs, backend=LocalBackend(inputs.base_model, threads=1), store=Store(cfg.db_path)
    )
    daemon = Daemon(loop)
    daemon.start()
    try:
        url = json.loads(daemon.address_file.read_text())["proxy"]
        client = openai.OpenAI(base_url=url + "/v1", api_key="-", max_retries=0, timeout=300)
        for prompt in inputs.train_prompts[:3]:
            client.completions.create(model="loopd", prompt=prompt.text, max_tokens=8)
        metrics = httpx.get(f"http://127.0.0.1:{daemon.port}/metrics", timeout=60).text
        assert 'loopd_proxy_requests_total{route="completions",status="200"} 3.0' in metrics
    finally:
        daemon.stop()
    rows = loop.store.db.execute("select count(*) from samples where prompt_id like 'proxy-%'")
    assert rows.fetchone()[0] == 3


def test_ingest_stores_a_batch_once_per_key_and_refuses_bad_ones(running: Running) -> None:
    url = running.proxy.url + "/v1/loopd/samples"
    auth = {"Authorization": f"Bearer {KEY}"}
    loop_text = "the cat sat on the mat. " * 30
    batch = {
        "samples": [
            {"prompt": "doc: a", "completion": "fine.", "finish_reason": "stop"},
            {"messages": [{"role": "user", "content": "b"}], "completion": loop_text,
             "finish_reason": "length", "model": "loopd-v0002"},
        ]
    }  # fmt: skip
    headers = auth | {"Idempotency-Key": "batch-1"}
    first = httpx.post(url, json=batch, headers=headers, timeout=60).json()
    assert (first["stored"], first["degenerate"], first["replayed"]) == (2, 1, False)
    again = httpx.post(url, json=batch, headers=headers, timeout=60).json()
    assert (again["stored"], again["ids"], again["replayed"]) == (0, first["ids"], True)
    assert running.loop.store.counts()["samples"] == 2
    bad = [
        ({"samples": []}, "samples"),
        ({"samples": [{"prompt": "a"}]}, "samples[0].completion"),
        ({"samples": [{"completion": "x"}]}, "samples[0]"),
        ({"samples": [batch["samples"][0] | {"token_ids": [-1]}]}, "samples[0].token_ids[0]"),
        ({"samples": [batch["samples"][0] | {"extra": 1}]}, "samples[0].extra"),
        ({"samples": [batch["samples"][0]] * 1001}, "samples"),
    ]
    for body, param in bad:
        response = httpx.post(url, json=body, headers=auth, timeout=60)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
    assert httpx.post(url, json=batch, timeout=60).status_code == 401
    assert running.loop.store.counts()["samples"] == 2


def test_redacted_words_never_reach_the_store(config: LoopdConfig) -> None:
    for running in proxied(config, redact_patterns=[r"[\w.]+@[\w.]+", r"sk-[A-Za-z0-9]{8,}"]):
        secret = "doc: mail ada@example.com key sk-ABCDEF123456 text:"
        running.client().completions.create(model="loopd", prompt=secret, max_tokens=8)
        ingest = {"samples": [{"prompt": secret, "completion": "to ada@example.com"}]}
        headers = {"Authorization": f"Bearer {KEY}"}
        httpx.post(running.proxy.url + "/v1/loopd/samples", json=ingest, headers=headers,
                   timeout=60).raise_for_status()  # fmt: skip
        assert running.samples() == 2
        dump = "\n".join(running.loop.store.db.iterdump())
        assert "ada@example.com" not in dump and "sk-ABCDEF123456" not in dump
        assert "doc: mail [redacted] key [redacted] text:" in dump

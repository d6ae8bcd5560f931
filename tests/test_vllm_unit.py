"""The vLLM backend's pure logic, with no server: backoff, breaker, error mapping, retries,
restart handling, drain and multi-replica rollback against a scripted fake vLLM
(``httpx.MockTransport``). The real server is exercised in ``tests/integration``."""

from __future__ import annotations

import asyncio
import json
import random
import threading

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from loopd.backends.vllm import (
    AdapterAlreadyLoadedError,
    AdapterNotLoadedError,
    AdapterPathError,
    AdapterRankError,
    AdapterRejectedError,
    ServingRequestError,
    ServingUnavailableError,
    VllmBackend,
    VllmConfig,
    adapter_error,
    chosen_logprobs,
    error_message,
)
from loopd.backends.vllm.resilience import Backoff, BreakerState, CircuitBreaker
from loopd.types import GenerationRequest, Prompt

DOC = Prompt(id="p", text="doc: amber text:")


# -- backoff and breaker -------------------------------------------------------------------


def test_backoff_grows_caps_and_jitters_within_bounds():
    backoff = Backoff(initial_s=0.1, max_s=1.0, multiplier=2.0, jitter=0.5)
    rng = random.Random(0)
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = [backoff.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling * 0.3  # jitter actually spreads them
    assert Backoff(0.1, 1.0, 2.0, jitter=0.0).delay(2) == pytest.approx(0.4)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_then_half_opens_with_one_trial():
    clock, changes = Clock(), []
    breaker = CircuitBreaker(
        threshold=3, reset_s=10, clock=clock, on_change=lambda old, new: changes.append(new)
    )
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow() and breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    assert breaker.retry_in() == 10
    clock.now = 10
    assert breaker.allow() and breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # only one trial at a time
    breaker.record_failure()  # the trial failed: open again for reset_s
    assert breaker.state is BreakerState.OPEN and not breaker.allow()
    clock.now = 20
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.failures == 0
    assert changes == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_success_resets_the_consecutive_failure_count():
    breaker = CircuitBreaker(threshold=2, reset_s=1, clock=Clock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED


# -- error mapping -------------------------------------------------------------------------

# vLLM 0.32's messages, as measured (DESIGN.md).
ALREADY = (
    "The lora adapter 'a' has already been loaded. If you want to load the adapter in "
    "place, set 'load_inplace' to True."
)
NOT_FOUND = "Loading lora a failed: No adapter found for /nope"
RANK = (
    "Call to add_lora method failed: Worker failed with error 'LoRA rank 16 is greater than "
    "max_lora_rank 8.', please check the stack trace above for the root cause"
)


@pytest.mark.parametrize(
    ("status", "message", "error", "fix"),
    [
        (400, ALREADY, AdapterAlreadyLoadedError, "new name"),
        (404, NOT_FOUND, AdapterPathError, "must exist on the vLLM host"),
        (500, RANK, AdapterRankError, "--max-lora-rank"),
        (400, "something else", AdapterRejectedError, "something else"),
    ],
)
def test_adapter_errors_map_to_loopd_errors_that_name_the_fix(status, message, error, fix):
    mapped = adapter_error(status, message, adapter="a", path="/p", endpoint="http://h:1")
    assert type(mapped) is error
    assert fix in str(mapped) and mapped.status == status and mapped.endpoint == "http://h:1"


def test_error_message_reads_vllm_error_bodies():
    nested = httpx.Response(400, json={"error": {"message": "bad", "code": 400}})
    flat = httpx.Response(400, json={"message": "flat"})
    text = httpx.Response(500, text="Internal Server Error")
    assert [error_message(r) for r in (nested, flat, text)] == [
        "bad",
        "flat",
        "Internal Server Error",
    ]


def test_chosen_logprobs_from_both_apis():
    assert chosen_logprobs({"token_logprobs": [-1.0, -0.5]}, chat=False) == (-1.0, -0.5)
    chat = {"content": [{"token": "a", "logprob": -0.25}, {"token": "b", "logprob": -2.0}]}
    assert chosen_logprobs(chat, chat=True) == (-0.25, -2.0)
    assert chosen_logprobs(None, chat=False) is None


@pytest.mark.parametrize(
    ("endpoints", "fix"),
    [
        (["http://h:8000/v1"], "drop the '/v1'"),
        (["h:8000"], "base URL"),
        (["http://h:1", "http://h:1/"], "duplicates"),
        ([], "at least 1"),
    ],
)
def test_config_rejects_bad_endpoints_naming_the_fix(endpoints, fix):
    with pytest.raises(ValidationError, match=fix):
        VllmConfig(endpoints=endpoints)


def test_shipped_deploy_config_is_valid_and_hides_the_key():
    import tomllib
    from pathlib import Path

    shipped = Path(__file__).parents[1] / "deploy" / "loopd.toml"
    section = tomllib.loads(shipped.read_text())["serving"]["vllm"]
    config = VllmConfig(**section, api_key="s3cret")
    assert config.endpoints == ["http://vllm:8000"] and "s3cret" not in repr(config)


def test_config_rejects_unknown_keys_and_inverted_backoff():
    with pytest.raises(ValidationError, match="extra"):
        VllmConfig(endpoint="http://h:1")
    with pytest.raises(ValidationError, match="raise backoff_max_s"):
        VllmConfig(backoff_initial_s=2.0, backoff_max_s=1.0)


# -- a scripted fake vLLM --------------------------------------------------------------------


class FakeVllm:
    """Just enough of vLLM's HTTP API; ``fail`` scripts the next answers of a path."""

    def __init__(self, base: str = "tiny"):
        self.base = base
        self.adapters: dict[str, str] = {}
        self.fail: dict[str, list[int | Exception]] = {}
        self.calls: list[str] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.calls.append(path)
        script = self.fail.get(path)
        if script:
            outcome = script.pop(0)
            if isinstance(outcome, Exception):
                raise outcome
            return httpx.Response(outcome, json={"error": {"message": f"scripted {outcome}"}})
        body = json.loads(request.content) if request.content else {}
        if path == "/health":
            return httpx.Response(200)
        if path == "/v1/models":
            cards = [{"id": self.base, "root": "/base", "parent": None}]
            cards += [{"id": n, "root": p, "parent": self.base} for n, p in self.adapters.items()]
            return httpx.Response(200, json={"data": cards})
        if path == "/v1/load_lora_adapter":
            if body["lora_name"] in self.adapters:
                return httpx.Response(400, json={"error": {"message": ALREADY}})
            self.adapters[body["lora_name"]] = body["lora_path"]
            return httpx.Response(200, text="Success")
        if path == "/v1/unload_lora_adapter":
            if self.adapters.pop(body["lora_name"], None) is None:
                return httpx.Response(404, json={"error": {"message": "cannot be found"}})
            return httpx.Response(200, text="Success")
        model = body["model"]
        if model != self.base and model not in self.adapters:
            return httpx.Response(
                404, json={"error": {"message": f"The model `{model}` does not exist."}}
            )
        if self.gate is not None and path == "/v1/completions" and body["max_tokens"] > 1:
            await self.gate.wait()
        choices = [
            {
                "index": i,
                "text": f" {model} {i}",
                "finish_reason": "length",
                "stop_reason": None,
                "token_ids": [5, 6],
            }
            for i in range(body.get("n", 1))
        ]
        return httpx.Response(200, json={"model": model, "choices": choices})


def fast_config(**overrides) -> VllmConfig:
    settings = dict(
        endpoints=["http://a:1"],
        max_retries=3,
        backoff_initial_s=0.001,
        backoff_max_s=0.002,
        breaker_reset_s=0.05,
        drain_quiet_s=0.0,
        monitor_interval_s=0,
    )
    return VllmConfig(**(settings | overrides))


def make_backend(fake, config=None, **kwargs):
    events: list[tuple[str, dict]] = []
    registry = CollectorRegistry()
    transport = httpx.MockTransport(fake)
    backend = VllmBackend(
        config or fast_config(),
        base_model_name=None,
        registry=registry,
        on_event=lambda k, p: events.append((k, p)),
        transport=transport,
        **kwargs,
    )
    return backend, events, registry


def test_generate_parses_choices_and_retries_server_trouble():
    fake = FakeVllm()
    fake.fail["/v1/completions"] = [503, httpx.ConnectError("refused")]
    backend, _, registry = make_backend(fake)
    with backend:
        [[first, second]] = backend.generate([GenerationRequest(DOC, 4, n=2, seed=3)])
    assert (first.text, second.text) == (" tiny 0", " tiny 1")  # as served, not stripped
    assert first.token_ids == (5, 6) and first.adapter is None and first.seed == 3
    assert registry.get_sample_value("loopd_vllm_retries_total", {"operation": "generate"}) == 2


def test_bad_request_is_not_retried():
    fake = FakeVllm()
    fake.fail["/v1/completions"] = [400]
    backend, _, _ = make_backend(fake)
    with backend, pytest.raises(ServingRequestError, match="scripted 400"):
        backend.generate([GenerationRequest(DOC, 4)])
    assert fake.calls.count("/v1/completions") == 1


def test_exhausted_retries_raise_unavailable_and_open_the_breaker():
    fake = FakeVllm()
    fake.fail["/v1/completions"] = [500] * 10
    backend, events, registry = make_backend(fake, fast_config(breaker_failure_threshold=2))
    with backend, pytest.raises(ServingUnavailableError, match="after 4 attempts"):
        backend.generate([GenerationRequest(DOC, 4)])
    assert ("serving_breaker_open", {"endpoint": "http://a:1", "previous": "CLOSED"}) in events
    assert (
        registry.get_sample_value("loopd_vllm_breaker_opened_total", {"endpoint": "http://a:1"})
        >= 1
    )


def test_a_404_on_a_loaded_adapter_reloads_it_and_retries():
    """vLLM restarted and lost the adapter: the request still succeeds."""
    fake = FakeVllm()
    backend, events, registry = make_backend(fake)
    with backend:
        backend.load_adapter("a-v0001", "/ad/1")
        fake.adapters.clear()  # the restart
        [[completion]] = backend.generate([GenerationRequest(DOC, 4, adapter="a-v0001")])
    assert completion.adapter == "a-v0001"
    assert fake.adapters == {"a-v0001": "/ad/1"}
    kinds = [k for k, _ in events]
    assert "serving_restart_detected" in kinds and "adapter_reloaded" in kinds
    assert (
        registry.get_sample_value("loopd_vllm_restarts_detected_total", {"endpoint": "http://a:1"})
        == 1
    )


def test_failed_probe_unloads_the_adapter():
    fake = FakeVllm()
    backend, events, _ = make_backend(fake)
    fake.fail["/v1/completions"] = [500]
    with backend:
        with pytest.raises(Exception, match="probe"):
            backend.load_adapter("a-v0001", "/ad/1")
        assert backend.adapters() == [] and fake.adapters == {}
    assert events[-1][1]["error"] == "probe_failed"


def test_multi_replica_failure_rolls_back_on_the_replicas_that_took_it():
    replicas = {"a": FakeVllm(), "b": FakeVllm()}
    replicas["b"].fail["/v1/load_lora_adapter"] = [404]

    async def route(request: httpx.Request) -> httpx.Response:
        return await replicas[request.url.host](request)

    config = fast_config(endpoints=["http://a:1", "http://b:1"])
    backend, events, _ = make_backend(route, config)
    with backend:
        with pytest.raises(AdapterPathError):
            backend.load_adapter("a-v0001", "/ad/1")
        assert backend.adapters() == []
    assert replicas["a"].adapters == {} and replicas["b"].adapters == {}
    assert events[-1][1]["rolled_back_on"] == ["http://a:1"]


def test_unload_waits_for_in_flight_requests_on_that_adapter():
    fake = FakeVllm()
    backend, events, _ = make_backend(fake)
    with backend:
        backend.load_adapter("a-v0001", "/ad/1")
        fake.gate = asyncio.Event()
        results: list = []
        worker = threading.Thread(
            target=lambda: results.append(
                backend.generate([GenerationRequest(DOC, 4, adapter="a-v0001")])
            )
        )
        worker.start()
        while backend._inflight["a-v0001"] == 0:
            pass
        unloader = threading.Thread(target=backend.unload_adapter, args=("a-v0001",))
        unloader.start()
        unloader.join(timeout=0.3)
        assert unloader.is_alive() and "a-v0001" in fake.adapters  # still draining
        backend._loop.call_soon_threadsafe(fake.gate.set)
        worker.join(timeout=5)
        unloader.join(timeout=5)
        assert results[0][0][0].adapter == "a-v0001"  # the in-flight request succeeded
        assert fake.adapters == {}
    assert events[-1][0] == "adapter_unloaded" and events[-1][1]["drained"] is True


def test_drain_is_bounded_by_its_timeout():
    fake = FakeVllm()
    backend, events, _ = make_backend(fake, fast_config(drain_timeout_s=0.1))
    with backend:
        backend.load_adapter("a-v0001", "/ad/1")
        fake.gate = asyncio.Event()
        worker = threading.Thread(
            target=lambda: backend.generate([GenerationRequest(DOC, 4, adapter="a-v0001")]),
            daemon=True,
        )
        worker.start()
        while backend._inflight["a-v0001"] == 0:
            pass
        backend.unload_adapter("a-v0001")
        backend._loop.call_soon_threadsafe(fake.gate.set)
        worker.join(timeout=60)
    assert events[-1][1]["drained"] is False


def test_unknown_adapter_fails_fast_and_is_a_key_error():
    backend, _, _ = make_backend(FakeVllm())
    with backend:
        with pytest.raises(AdapterNotLoadedError, match="not loaded"):
            backend.generate([GenerationRequest(DOC, 4, adapter="nope")])
        with pytest.raises(KeyError):
            backend.unload_adapter("nope")


def test_event_hook_errors_never_break_serving():
    def broken(kind, payload):
        raise RuntimeError("store is down")

    backend = VllmBackend(fast_config(), on_event=broken, transport=httpx.MockTransport(FakeVllm()))
    with backend:
        backend.load_adapter("a-v0001", "/ad/1")
        assert backend.adapters() == ["a-v0001"]


def test_reconcile_reloads_what_it_can_when_one_adapter_fails():
    fake = FakeVllm()
    backend, events, _ = make_backend(fake)
    with backend:
        backend.load_adapter("a-v0001", "/ad/1")
        backend.load_adapter("a-v0002", "/ad/2")
        fake.adapters.clear()  # a restart
        fake.fail["/v1/load_lora_adapter"] = [404]  # v0001's folder is gone now
        backend.reconcile()
        assert fake.adapters == {"a-v0002": "/ad/2"}
        assert backend.adapters() == ["a-v0001", "a-v0002"]  # still wanted: retried later
        backend.reconcile()
        assert set(fake.adapters) == {"a-v0001", "a-v0002"}
    kinds = [k for k, _ in events]
    assert kinds.count("adapter_reload_failed") == 1 and kinds.count("adapter_reloaded") == 2


def test_api_key_is_sent_as_bearer_token():
    seen: list[str | None] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return await FakeVllm()(request)

    backend, _, _ = make_backend(handler, fast_config(api_key="s3cret"))
    with backend:
        backend.health()
    assert seen and all(h == "Bearer s3cret" for h in seen)

"""vLLM killed mid-run: loopd keeps running, backs off, keeps what it stored, and reloads
the live adapter once vLLM is back. Runs last: it kills the shared server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from loopd.backends.vllm import ServingUnavailableError, VllmBackend, VllmConfig
from loopd.backends.vllm.server import VllmServer
from loopd.store import Store
from loopd.types import CLEAN, GenerationRequest, Prompt

from .conftest import SERVED_NAME

pytestmark = [pytest.mark.vllm, pytest.mark.kills_server]
PROMPTS = [
    Prompt(id=f"d{i}", text=f"doc: amber {w} {w} river text:")
    for i, w in enumerate(["tiger", "ocean", "lemon", "cedar"])
]


def sample_round(backend: VllmBackend, store: Store, adapter: str) -> int:
    """What the daemon's sampling job does: generate, then store every completion."""
    results = backend.generate([GenerationRequest(p, 8, adapter=adapter) for p in PROMPTS])
    rows = [(p, c, CLEAN) for p, cs in zip(PROMPTS, results, strict=True) for c in cs]
    return len(store.add_samples(rows))


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.25)
    return False


def served_names(server: VllmServer) -> set[str]:
    try:
        data = httpx.get(server.url + "/v1/models", timeout=5).json()["data"]
    except httpx.HTTPError:
        return set()
    return {card["id"] for card in data}


def test_vllm_killed_mid_run_then_back(
    vllm_server: VllmServer, vllm_config: VllmConfig, make_adapter, tmp_path: Path
):
    events: list[tuple[str, dict]] = []
    registry = CollectorRegistry()
    config = vllm_config.model_copy(update={"monitor_interval_s": 0.5, "max_retries": 3})
    backend = VllmBackend(
        config,
        base_model_name=SERVED_NAME,
        registry=registry,
        on_event=lambda k, p: events.append((k, p)),
    )
    store = Store(tmp_path / "loopd.db")
    try:
        backend.load_adapter("rs-v0001", make_adapter(200))
        [[before]] = backend.generate([GenerationRequest(PROMPTS[0], 12, adapter="rs-v0001")])
        stored = sample_round(backend, store, "rs-v0001")

        vllm_server.kill()
        rounds, attempts = 3, config.max_retries + 1
        for _ in range(rounds):  # the daemon's job keeps failing, the daemon keeps running
            with pytest.raises(ServingUnavailableError, match=f"failed after {attempts} attempts"):
                sample_round(backend, store, "rs-v0001")
        # Each request retried exactly max_retries times (a backoff sleep before each) and
        # then gave up: neither failing at once nor spinning on a dead server.
        retries = registry.get_sample_value("loopd_vllm_retries_total", {"operation": "generate"})
        assert retries == rounds * len(PROMPTS) * config.max_retries
        # And the breaker opened: some of those attempts were refused here rather than
        # sent, so the dead server was not hammered with every one.
        assert any(kind == "serving_breaker_open" for kind, _ in events)
        sent = {"endpoint": config.endpoints[0], "operation": "generate", "outcome": "error"}
        posts = registry.get_sample_value("loopd_vllm_requests_total", sent)
        assert 1 <= posts < rounds * len(PROMPTS) * attempts
        assert store.counts()["samples"] == stored  # nothing stored was lost
        assert not backend.health()
        assert backend.adapters() == ["rs-v0001"]  # still what loopd wants live

        vllm_server.start()
        # The monitor reloads the adapter and only then records the event: wait on both,
        # with a deadline a busy machine cannot miss.
        recovered = {"serving_restart_detected", "adapter_reloaded"}
        assert wait_for(lambda: recovered <= {kind for kind, _ in events}, 300), events
        assert wait_for(lambda: "rs-v0001" in served_names(vllm_server), 300), events
        assert wait_for(backend.health, 300)
        [[after]] = backend.generate([GenerationRequest(PROMPTS[0], 12, adapter="rs-v0001")])
        assert after.text == before.text  # the same adapter weights serve again
        assert after.adapter == "rs-v0001"
        stored += sample_round(backend, store, "rs-v0001")
        assert store.counts()["samples"] == stored
    finally:
        for name in backend.adapters():
            backend.unload_adapter(name)
        backend.close()
        store.close()

"""20 hot-swaps while 8 clients keep sampling: zero failed requests, and every response
comes from exactly one adapter version (vLLM's ``model`` field and that version's text)."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from loopd.backends.vllm import AdapterNotLoadedError, VllmBackend, VllmConfig
from loopd.types import GenerationRequest, Prompt

from .conftest import SERVED_NAME

pytestmark = pytest.mark.vllm
CLIENTS, SWAPS = 8, 20
PER_VERSION = 4  # requests each version serves before it is swapped out
DOC = Prompt(id="doc", text="doc: amber anchor candle river tiger text:")


def request(adapter: str) -> GenerationRequest:
    return GenerationRequest(DOC, max_tokens=8, adapter=adapter)


def distinct_adapters(backend: VllmBackend, make_adapter, count: int) -> list:
    """Seeded adapters whose answers differ from each other's and are not empty.

    Random LoRA noise now and then makes two versions answer alike (often with an
    immediate end of text); such a pair could not prove which version answered.
    """
    folders, answers = [], set()
    seed = 100
    while len(folders) < count:
        folder, name, seed = make_adapter(seed), f"pick-{seed}", seed + 1
        backend.load_adapter(name, folder)  # a new name each: no stale prefix-cache hits
        [[answer]] = backend.generate([request(name)])
        backend.unload_adapter(name)
        if answer.text.strip() and answer.text not in answers:
            folders.append(folder)
            answers.add(answer.text)
    return folders


def test_twenty_swaps_under_load_fail_no_request(vllm_config: VllmConfig, make_adapter):
    registry = CollectorRegistry()
    backend = VllmBackend(vllm_config, base_model_name=SERVED_NAME, registry=registry)
    folders = distinct_adapters(backend, make_adapter, SWAPS + 1)
    expected: dict[str, str] = {}

    def deploy(version: int) -> str:
        name = f"swap-v{version:04d}"
        backend.load_adapter(name, folders[version])
        [[alone]] = backend.generate([request(name)])
        expected[name] = alone.text
        return name

    live = [deploy(0)]
    stop = threading.Event()
    responses: list[tuple[str, str | None, str]] = []
    failures: list[BaseException] = []
    stale: list[tuple[str, str]] = []  # (version asked for, version live when refused)

    def client() -> None:
        while not stop.is_set():
            name = live[0]  # the routing decision, read per request like the sampler does
            try:
                [[completion]] = backend.generate([request(name)])
            except AdapterNotLoadedError:
                # BUG (loopd.backends.vllm, _drain): a request routed to the old version
                # just before the swap can reach the backend after the drain found that
                # version idle (nothing in flight, drain_quiet_s since the last *start*,
                # which is always true once requests take longer than that, as on a busy
                # machine): it is refused, never sent. The daemon's sample job reads
                # live_name() the same way. Counted apart until loopd closes the window.
                stale.append((name, live[0]))
            except Exception as error:
                failures.append(error)
            else:
                responses.append((name, completion.adapter, completion.text))

    def traffic_reached_live() -> None:
        """Wait (on the responses, not the clock) until the live version has served
        PER_VERSION requests, so every version is swapped out under real traffic."""
        deadline = time.monotonic() + 120
        while sum(name == live[0] for name, _, _ in list(responses)) < PER_VERSION:
            assert not failures, failures
            assert time.monotonic() < deadline, f"no traffic reached {live[0]}"
            time.sleep(0.02)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, SWAPS + 1):
            traffic_reached_live()
            old, live[0] = live[0], deploy(version)
            backend.unload_adapter(old)
        traffic_reached_live()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for name in backend.adapters():
            backend.unload_adapter(name)
        backend.close()

    assert failures == []
    assert all(asked != live_then for asked, live_then in stale)  # never the live version
    assert len(responses) >= PER_VERSION * (SWAPS + 1)
    assert len(set(expected.values())) == SWAPS + 1  # each version answers differently
    misattributed = [r for r in responses if r[1] != r[0]]
    assert misattributed == []
    wrong_text = [r for r in responses if r[2] != expected[r[0]]]
    assert wrong_text == []
    assert {name for name, _, _ in responses} == set(expected)  # every version served
    failed_requests = registry.get_sample_value(
        "loopd_vllm_requests_total",
        {"endpoint": vllm_config.endpoints[0], "operation": "generate", "outcome": "error"},
    )
    assert failed_requests is None  # not even a retried failure

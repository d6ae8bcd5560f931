"""20 hot-swaps while 8 clients keep sampling: zero failed requests, and every response
comes from exactly one adapter version (vLLM's ``model`` field and that version's text)."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from loopd.backends.vllm import VllmBackend, VllmConfig
from loopd.types import GenerationRequest, Prompt

from .conftest import SERVED_NAME

pytestmark = pytest.mark.vllm
CLIENTS, SWAPS = 8, 20
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

    def client() -> None:
        while not stop.is_set():
            name = live[0]  # the routing decision, read per request like the sampler does
            try:
                [[completion]] = backend.generate([request(name)])
            except Exception as error:
                failures.append(error)
            else:
                responses.append((name, completion.adapter, completion.text))

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        for version in range(1, SWAPS + 1):
            time.sleep(0.2)  # let traffic reach the live version
            old, live[0] = live[0], deploy(version)
            backend.unload_adapter(old)
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for name in backend.adapters():
            backend.unload_adapter(name)
        backend.close()

    assert failures == []
    assert len(responses) >= 4 * SWAPS
    assert len(set(expected.values())) == SWAPS + 1  # each version answers differently
    misattributed = [r for r in responses if r[1] != r[0]]
    assert misattributed == []
    wrong_text = [r for r in responses if r[2] != expected[r[0]]]
    assert wrong_text == []
    assert len({name for name, _, _ in responses}) >= SWAPS // 2
    failed_requests = registry.get_sample_value(
        "loopd_vllm_requests_total",
        {"endpoint": vllm_config.endpoints[0], "operation": "generate", "outcome": "error"},
    )
    assert failed_requests is None  # not even a retried failure

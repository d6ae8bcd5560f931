"""The real vLLM server behind a hop that answers 503s and slows down: loopd retries,
stores everything it acknowledged, and never swaps to an adapter the server refused."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from loopd.backends import AdapterLoadError
from loopd.backends.vllm import ServingUnavailableError, VllmBackend, VllmConfig
from loopd.store import Store
from loopd.types import CLEAN, GenerationRequest, Prompt

from .conftest import SERVED_NAME
from .fault_proxy import FaultProxy

pytestmark = pytest.mark.vllm
PROMPTS = [Prompt(id=f"f{i}", text=f"doc: amber {w} river text:") for i, w in enumerate("abc")]
COMPLETIONS = "/v1/completions"


@pytest.fixture
def proxied(vllm_server, vllm_config: VllmConfig) -> Iterator[tuple[FaultProxy, VllmBackend]]:
    proxy = FaultProxy(vllm_server.url)
    config = vllm_config.model_copy(
        update={"endpoints": [proxy.url], "breaker_failure_threshold": 50}
    )
    backend = VllmBackend(config, base_model_name=SERVED_NAME, registry=CollectorRegistry())
    try:
        yield proxy, backend
    finally:
        for name in backend.adapters():
            backend.unload_adapter(name)
        backend.close()
        proxy.close()


def sample(backend: VllmBackend, store: Store, adapter: str | None = None) -> int:
    groups = backend.generate([GenerationRequest(p, 8, adapter=adapter) for p in PROMPTS])
    rows = [(p, c, CLEAN) for p, group in zip(PROMPTS, groups, strict=True) for c in group]
    return len(store.add_samples(rows))


def test_503s_are_retried_and_every_answer_is_stored(proxied, tmp_path: Path) -> None:
    proxy, backend = proxied
    store = Store(tmp_path / "loopd.db")
    proxy.fail(COMPLETIONS, 2)  # fewer than max_retries: the job succeeds
    assert sample(backend, store) == len(PROMPTS)
    assert proxy.injected[COMPLETIONS] == 2 and proxy.forwarded[COMPLETIONS] == len(PROMPTS)

    proxy.fail(COMPLETIONS, 100)  # past every retry: the job fails, nothing half stored
    with pytest.raises(ServingUnavailableError):
        sample(backend, store)
    assert store.counts()["samples"] == len(PROMPTS)
    proxy.failures.clear()
    assert sample(backend, store) == len(PROMPTS)  # and the next job works
    assert store.counts()["samples"] == 2 * len(PROMPTS)


def test_a_slow_server_is_waited_for(proxied, tmp_path: Path) -> None:
    proxy, backend = proxied
    proxy.slow(2.0)
    assert sample(backend, Store(tmp_path / "loopd.db")) == len(PROMPTS)


def test_an_adapter_load_the_server_fails_leaves_the_live_one_serving(
    proxied, make_adapter: Callable[..., Path]
) -> None:
    proxy, backend = proxied
    backend.load_adapter("live-v0001", make_adapter(1))
    [[before]] = backend.generate([GenerationRequest(PROMPTS[0], 8, adapter="live-v0001")])
    proxy.fail("/v1/load_lora_adapter", 100)
    with pytest.raises(AdapterLoadError):
        backend.load_adapter("live-v0002", make_adapter(2))
    assert backend.adapters() == ["live-v0001"]
    [[after]] = backend.generate([GenerationRequest(PROMPTS[0], 8, adapter="live-v0001")])
    assert after.text == before.text

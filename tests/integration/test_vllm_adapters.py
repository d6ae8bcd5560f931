"""Adapter life cycle against a real vLLM: load, probe, route, unload; every refusal maps
to a loopd error, an event and a metric, and leaves the previous version serving."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from loopd.backends import AdapterLoadError
from loopd.backends.vllm import (
    AdapterAlreadyLoadedError,
    AdapterNotLoadedError,
    AdapterPathError,
    AdapterRankError,
    AdapterUnavailableError,
    VllmBackend,
    VllmConfig,
)
from loopd.backends.vllm.server import VllmServer, free_port
from loopd.types import GenerationRequest, Prompt

from .conftest import SERVED_NAME

pytestmark = pytest.mark.vllm
DOC = Prompt(id="doc", text="doc: amber anchor candle river text:")


def served(server: VllmServer) -> dict[str, dict]:
    cards = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
    return {card["id"]: card for card in cards}


def greedy(backend: VllmBackend, adapter: str | None) -> str:
    [[completion]] = backend.generate([GenerationRequest(DOC, max_tokens=12, adapter=adapter)])
    assert completion.adapter == adapter
    return completion.text


def test_load_route_unload(backend: VllmBackend, vllm_server: VllmServer, make_adapter):
    base = greedy(backend, None)
    backend.load_adapter("lc-v0001", make_adapter(1))
    assert backend.adapters() == ["lc-v0001"]
    assert served(vllm_server)["lc-v0001"]["parent"] == SERVED_NAME
    tuned = greedy(backend, "lc-v0001")
    assert tuned != base
    backend.unload_adapter("lc-v0001")
    assert backend.adapters() == []
    assert "lc-v0001" not in served(vllm_server)
    with pytest.raises(AdapterNotLoadedError, match="not loaded"):
        greedy(backend, "lc-v0001")
    with pytest.raises(KeyError):  # the local backend's contract for unknown names
        backend.unload_adapter("lc-v0001")


@pytest.fixture
def observed(vllm_config: VllmConfig):
    events: list[tuple[str, dict]] = []
    registry = CollectorRegistry()
    backend = VllmBackend(
        vllm_config,
        base_model_name=SERVED_NAME,
        registry=registry,
        on_event=lambda kind, payload: events.append((kind, payload)),
    )
    yield backend, events, registry
    for name in backend.adapters():
        backend.unload_adapter(name)
    backend.close()


@pytest.mark.parametrize(
    ("case", "error", "kind"),
    [
        ("same_name", AdapterAlreadyLoadedError, "already_loaded"),
        ("taken_on_server", AdapterAlreadyLoadedError, "already_loaded"),
        ("bad_path", AdapterPathError, "bad_path"),
        ("rank_too_large", AdapterRankError, "rank_too_large"),
    ],
)
def test_refused_adapter_leaves_previous_version_serving(
    observed, vllm_server: VllmServer, make_adapter: Callable[..., Path], case, error, kind
):
    backend, events, registry = observed
    backend.load_adapter("live-v0001", make_adapter(1))
    before = greedy(backend, "live-v0001")
    name, path = "live-v0002", make_adapter(2)
    if case == "same_name":
        name = "live-v0001"
    elif case == "taken_on_server":  # someone else loaded this name from another folder
        httpx.post(
            vllm_server.url + "/v1/load_lora_adapter",
            json={"lora_name": name, "lora_path": str(make_adapter(3))},
            timeout=10,
        )
    elif case == "bad_path":
        path = path.parent / "does-not-exist"
    elif case == "rank_too_large":
        path = make_adapter(4, rank=16)

    with pytest.raises(error) as raised:
        backend.load_adapter(name, path)

    assert isinstance(raised.value, AdapterLoadError)
    assert raised.value.kind == kind
    assert backend.adapters() == ["live-v0001"]
    assert greedy(backend, "live-v0001") == before  # the previous version still serves
    assert vllm_server.process.poll() is None
    failed = [p for k, p in events if k == "adapter_load_failed"]
    assert failed and failed[-1]["error"] == kind and failed[-1]["adapter"] == name
    labels = {"operation": "load", "outcome": kind}
    assert registry.get_sample_value("loopd_vllm_adapter_operations_total", labels) == 1.0
    if case == "taken_on_server":
        httpx.post(vllm_server.url + "/v1/unload_lora_adapter", json={"lora_name": name})
    if case != "same_name":
        assert name not in backend.adapters()


def test_adapter_left_on_server_from_same_folder_is_adopted(
    backend: VllmBackend, vllm_server: VllmServer, make_adapter
):
    """A loopd restart finds its live adapter still in vLLM: loading it again succeeds."""
    path = make_adapter(5)
    httpx.post(
        vllm_server.url + "/v1/load_lora_adapter",
        json={"lora_name": "adopt-v0001", "lora_path": str(path)},
        timeout=10,
    )
    backend.load_adapter("adopt-v0001", path)
    assert backend.adapters() == ["adopt-v0001"]
    greedy(backend, "adopt-v0001")


def test_multi_replica_load_is_rolled_back_everywhere_when_one_replica_fails(
    vllm_config: VllmConfig, vllm_server: VllmServer, make_adapter
):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = vllm_config.model_copy(update={"endpoints": [vllm_server.url, dead], "max_retries": 1})
    events: list[tuple[str, dict]] = []
    with VllmBackend(
        config, base_model_name=SERVED_NAME, on_event=lambda k, p: events.append((k, p))
    ) as backend:
        with pytest.raises(AdapterUnavailableError, match="unreachable"):
            backend.load_adapter("multi-v0001", make_adapter(6))
        assert backend.adapters() == []
    assert "multi-v0001" not in served(vllm_server)  # rolled back on the healthy replica
    [failed] = [p for k, p in events if k == "adapter_load_failed"]
    assert failed["rolled_back_on"] == [vllm_server.url]


def test_multi_replica_load_reaches_all_endpoints(
    vllm_config: VllmConfig, vllm_server: VllmServer, make_adapter
):
    """Two endpoint URLs for one server (localhost and 127.0.0.1) stand in for two replicas;
    the second load meets 'already loaded' from the same folder and adopts it."""
    other = vllm_server.url.replace("127.0.0.1", "localhost")
    config = vllm_config.model_copy(update={"endpoints": [vllm_server.url, other]})
    with VllmBackend(config, base_model_name=SERVED_NAME) as backend:
        backend.load_adapter("multi-v0002", make_adapter(7))
        texts = {greedy(backend, "multi-v0002") for _ in range(4)}  # round-robin over both
        assert len(texts) == 1
        backend.unload_adapter("multi-v0002")
    assert "multi-v0002" not in served(vllm_server)


def test_adapter_lost_by_the_server_is_reloaded_by_the_next_request(
    vllm_config: VllmConfig, vllm_server: VllmServer, make_adapter
):
    """What a restart looks like to a request (monitor off): vLLM answers 404 for the live
    adapter; loopd reloads it and the request still succeeds."""
    events: list[tuple[str, dict]] = []
    with VllmBackend(
        vllm_config, base_model_name=SERVED_NAME, on_event=lambda k, p: events.append((k, p))
    ) as backend:
        backend.load_adapter("lost-v0001", make_adapter(8))
        before = greedy(backend, "lost-v0001")
        httpx.post(
            vllm_server.url + "/v1/unload_lora_adapter",
            json={"lora_name": "lost-v0001"},
            timeout=10,
        )
        assert greedy(backend, "lost-v0001") == before
        assert "lost-v0001" in served(vllm_server)
        backend.unload_adapter("lost-v0001")
    kinds = [kind for kind, _ in events]
    assert "serving_restart_detected" in kinds and "adapter_reloaded" in kinds

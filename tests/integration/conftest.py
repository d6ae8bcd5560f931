"""One real vLLM server (CPU build) for the whole test session, on the tiny local model.

The server runs from the separate ``.venv-vllm`` (``.ci/install-vllm.sh``; path from
``$LOOPD_VLLM_PYTHON``). A missing venv FAILS the tests instead of skipping them: a
skipped integration suite looks green while testing nothing.

The model is the shipped embedded model (the root conftest builds it once per machine
into pytest's cache), so the loop itself can run over vLLM as it would in production.
Adapters come from the root conftest's ``make_adapter``: PEFT LoRAs with seeded random
non-zero ``lora_B``, so each version's greedy output differs from the base's and from the
other versions' - which is what lets a test attribute a response to one version.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from loopd.backends.vllm import VllmBackend, VllmConfig
from loopd.backends.vllm.server import INSTALL_HINT, VllmServer, vllm_python

SERVED_NAME = "tiny"
# A chat template for the tiny model (it has none), so the chat endpoint is tested too.
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vllm: needs a real vLLM server (.ci/install-vllm.sh)")
    config.addinivalue_line("markers", "kills_server: kills the shared vLLM server; runs last")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that kill and restart the shared server go last, so nothing else sees it."""
    items.sort(key=lambda item: item.get_closest_marker("kills_server") is not None)


@pytest.fixture(scope="session")
def tiny_model(base_model: Path) -> Path:
    """The real embedded model (it loops), so a whole loop can run over vLLM too."""
    return base_model


@pytest.fixture(scope="session")
def vllm_interpreter() -> Path:
    """Checked before anything slow runs: no venv is a failure, never a skip."""
    python = vllm_python()
    if not python.exists():
        pytest.fail(f"vLLM venv missing: no {python}; {INSTALL_HINT}", pytrace=False)
    return python


@pytest.fixture(scope="session")
def vllm_server(
    vllm_interpreter: Path, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    folder = tmp_path_factory.mktemp("vllm-server")
    template = folder / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    server = VllmServer(
        tiny_model,
        python=vllm_interpreter,
        served_name=SERVED_NAME,
        log_path=folder / "vllm.log",
        extra_args=("--chat-template", str(template)),
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def vllm_config(vllm_server: VllmServer) -> VllmConfig:
    """Fast-failing settings so error paths cost seconds, not minutes."""
    return VllmConfig(
        endpoints=[vllm_server.url],
        max_retries=3,
        backoff_initial_s=0.1,
        backoff_max_s=1.0,
        breaker_reset_s=1.0,
        drain_quiet_s=0.2,
        drain_timeout_s=10.0,
        monitor_interval_s=0,
    )


@pytest.fixture
def backend(vllm_config: VllmConfig) -> Iterator[VllmBackend]:
    """A backend that unloads what it loaded, so tests do not leak adapters to each other."""
    with VllmBackend(vllm_config, base_model_name=SERVED_NAME) as backend:
        yield backend
        for name in backend.adapters():
            backend.unload_adapter(name)

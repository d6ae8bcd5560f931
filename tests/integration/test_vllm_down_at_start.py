"""vLLM down when the daemon starts: the daemon starts anyway (``/healthz`` 200: the
process lives; ``/readyz`` 503), its jobs fail and are counted while they retry
recovery, and once vLLM is up the live adapter is loaded and sampling resumes. Runs
last: it stops the shared server."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from loopd.adapters import AdapterRegistry
from loopd.backends.vllm import VllmBackend, VllmConfig
from loopd.backends.vllm.server import VllmServer
from loopd.config import LoopdConfig
from loopd.daemon import Daemon
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.store import Store

from .conftest import SERVED_NAME

pytestmark = [pytest.mark.vllm, pytest.mark.kills_server]


def wait_for(condition: Callable[[], bool], timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.25)


def test_the_daemon_starts_with_vllm_down_and_recovers_when_it_is_back(
    vllm_server: VllmServer,
    vllm_config: VllmConfig,
    daemon_config: LoopdConfig,
    make_adapter: Callable[..., Path],
) -> None:
    serving = daemon_config.serving.model_copy(
        update={
            "backend": "vllm",
            "vllm": vllm_config.model_copy(update={"served_model_name": SERVED_NAME}),
        }
    )
    sampling = daemon_config.sampling.model_copy(
        update={"interval_seconds": 1, "prompts_per_round": 4}
    )
    cfg = daemon_config.model_copy(update={"serving": serving, "sampling": sampling})
    store = Store(cfg.db_path)
    registry = AdapterRegistry(cfg.adapters_dir)
    staging = registry.staging_dir(1)
    shutil.copytree(make_adapter(1), staging, dirs_exist_ok=True)
    store.add_adapter_version(
        registry.publish(staging, version=1, parent=None, round_id=None, details={})
    )
    store.record_event("deployed", version=1, source="operator")  # v0001 is live

    vllm_server.stop()
    backend = VllmBackend(cfg.serving.vllm)
    daemon = Daemon(Loop(cfg, resolve_inputs(cfg), backend=backend, store=store))
    daemon.start()  # no traceback, no exit
    try:
        url = f"http://127.0.0.1:{daemon.port}"
        assert httpx.get(f"{url}/healthz").status_code == 200  # alive: no restart wanted
        not_ready = httpx.get(f"{url}/readyz", timeout=60)
        assert not_ready.status_code == 503
        checks = not_ready.json()["checks"]
        assert checks["store"]["ok"] and not checks["serving"]["ok"]
        assert not checks["live_adapter"]["ok"] and checks["live_adapter"]["name"] == "loopd-v0001"
        errors = {"job_name": "sample", "outcome": "error"}
        failed = lambda: daemon.metrics.registry.get_sample_value("loopd_job_runs_total", errors)  # noqa: E731
        wait_for(lambda: (failed() or 0) >= 1)
        assert not daemon.recovered.is_set() and store.counts()["samples"] == 0

        vllm_server.start()
        wait_for(lambda: store.counts()["samples"] > 0)
        assert daemon.recovered.is_set()
        assert "loopd-v0001" in backend.adapters()  # the live adapter was loaded first
        assert httpx.get(f"{url}/readyz", timeout=60).json() == {
            "ready": True,
            "checks": {
                "store": {"ok": True},
                "serving": {"ok": True},
                "live_adapter": {"ok": True, "name": "loopd-v0001"},
            },
        }
        assert {s["adapter"] for s in store.db.query("SELECT adapter FROM samples")} == {
            "loopd-v0001"
        }
    finally:
        daemon.stop()
        store.close()

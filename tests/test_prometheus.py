"""A real Prometheus server scrapes the daemon's real /metrics endpoint."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import generate_latest

from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig
from loopd.daemon import Daemon
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.metrics import Metrics
from loopd.store import Store


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def prometheus_bin() -> str:
    path = shutil.which("prometheus")
    assert path, "Prometheus is not installed: `apt-get install prometheus` (make test does it)"
    return path


def query(url: str, expression: str) -> list[dict]:
    response = httpx.get(f"{url}/api/v1/query", params={"query": expression}, timeout=60)
    if response.status_code != 200:  # still starting: "Service Unavailable", not JSON
        return []
    return response.json()["data"]["result"]


def test_prometheus_scrapes_loopd_metrics(
    daemon_config: LoopdConfig, tmp_path: Path, prometheus_bin: str
) -> None:
    cfg = daemon_config
    inputs = resolve_inputs(cfg)
    loop = Loop(
        cfg, inputs, backend=LocalBackend(inputs.base_model, threads=1), store=Store(cfg.db_path)
    )
    daemon = Daemon(loop)
    daemon.start()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: loopd\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{daemon.port}']\n"
    )
    port = free_port()
    server = subprocess.Popen(
        [
            prometheus_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300  # the first sampling round, on a busy machine
        samples: list[dict] = []
        while time.monotonic() < deadline:
            try:
                samples = query(url, "loopd_samples_total")
            except httpx.TransportError:
                samples = []
            if samples and float(samples[0]["value"][1]) > 0:
                break
            time.sleep(0.5)
        assert samples, "Prometheus never scraped loopd_samples_total"
        assert float(samples[0]["value"][1]) == cfg.sampling.prompts_per_round
        [up] = query(url, 'up{job="loopd"}')
        assert up["value"][1] == "1"
        assert query(url, "loopd_degeneration_rate")
        assert query(url, "loopd_degeneration_rate_by_kind")
        [pinned] = query(url, "loopd_pinned_version")
        assert pinned["value"][1] == "-1"
    finally:
        server.terminate()
        server.wait(timeout=30)
        daemon.stop()


def test_metrics_pass_promtool_lint(config: LoopdConfig) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: `apt-get install prometheus` (make test does it)"
    metrics = Metrics(Store(config.db_path))
    metrics.job_runs.labels("sample", "ok").inc()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=generate_latest(metrics.registry), capture_output=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""A real Prometheus server scrapes the daemon's real /metrics endpoint."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
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


def wait_for_series(
    url: str, expression: str, accept: Callable[[float], bool], *, timeout: float = 300
) -> float:
    """Wait until Prometheus answers ``expression`` with one series whose value
    ``accept`` takes (it reads the database afresh: scrapes lag behind); its value."""
    deadline = time.monotonic() + timeout
    seen: list[dict] = []
    while time.monotonic() < deadline:
        try:
            seen = query(url, expression)
        except httpx.TransportError:  # Prometheus still starting
            seen = []
        if len(seen) == 1 and accept(float(seen[0]["value"][1])):
            return float(seen[0]["value"][1])
        time.sleep(0.5)
    raise AssertionError(f"Prometheus never answered {expression} as the database says: {seen}")


def samples_by_label(store: Store) -> dict[tuple[str, str], int]:
    """The database's samples grouped as ``loopd_samples_total`` labels them."""
    sql = "SELECT adapter, degenerate, COUNT(*) AS n FROM samples GROUP BY 1, 2"
    return {
        (r["adapter"] or "base", "degenerate" if r["degenerate"] else "clean"): r["n"]
        for r in store.db.query(sql)
    }


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
        store = loop.store
        # the first sampling run, on a busy machine; the next is an hour away, so from
        # then on the database holds still and each series must come to equal it.
        ok = 'loopd_job_runs_total{job_name="sample",outcome="ok"}'
        wait_for_series(url, ok, lambda runs: runs >= 1)
        [up] = query(url, 'up{job="loopd"}')
        assert up["value"][1] == "1"
        assert store.counts()["samples"] == cfg.sampling.prompts_per_round  # one run so far
        wait_for_series(url, "sum(loopd_samples_total)", lambda n: n == store.counts()["samples"])
        held = samples_by_label(store)
        assert ("base", "degenerate") in held  # the embedded model loops
        for (adapter, outcome), count in held.items():
            series = f'loopd_samples_total{{adapter="{adapter}",outcome="{outcome}"}}'
            wait_for_series(url, series, lambda n, count=count: n == count)
        pending = store.count_fresh_pairs()
        assert pending > 0
        wait_for_series(url, "loopd_pending_pairs", lambda n: n == pending)
        wait_for_series(url, "loopd_pairs_total", lambda n: n == store.counts()["pairs"])
        live = store.live_version() or 0
        name = "base" if not live else f"{cfg.deploy.adapter_prefix}-v{live:04d}"
        info = f'loopd_live_adapter_info{{version="{live}",name="{name}"}}'
        wait_for_series(url, info, lambda one: one == 1)
        # set when the sample job returned: after its samples were stored, before now
        stored = next(store.db.query("SELECT MAX(created_at) AS t FROM samples"))["t"]
        success = 'loopd_job_last_success_timestamp_seconds{job_name="sample"}'
        wait_for_series(url, success, lambda at: stored <= at <= time.time())
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
    assert result.returncode == 0 and not result.stdout, result.stdout + result.stderr  # no lint

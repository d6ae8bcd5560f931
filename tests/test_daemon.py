"""The daemon: scheduled jobs, real HTTP endpoints, failures counted, clean shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig
from loopd.daemon import Daemon
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.store import Store


def wait_for(predicate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def job_runs(daemon: Daemon, outcome: str) -> float:
    """The sample job's runs with ``outcome`` so far (0 before the first)."""
    labels = {"job_name": "sample", "outcome": outcome}
    return daemon.metrics.registry.get_sample_value("loopd_job_runs_total", labels) or 0.0


def scrape(text: str) -> dict[str, float]:
    """A /metrics page parsed as Prometheus does: ``'name{label="v",...}' -> value``."""
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_jobs_run_metrics_scrape_and_failures_are_counted(daemon_config: LoopdConfig) -> None:
    cfg = daemon_config
    inputs = resolve_inputs(cfg)
    loop = Loop(
        cfg, inputs, backend=LocalBackend(inputs.base_model, threads=1), store=Store(cfg.db_path)
    )
    daemon = Daemon(loop)
    daemon.start()
    try:
        url = f"http://127.0.0.1:{daemon.port}"
        # "ok" is counted once the whole job (sampling, then pairing) is done; samples are
        # stored before pairing starts, so waiting on them would race the counter.
        wait_for(lambda: job_runs(daemon, "ok") >= 1)
        assert httpx.get(f"{url}/healthz").status_code == 200
        scraped = scrape(httpx.get(f"{url}/metrics").text)
        runs = scraped['loopd_job_runs_total{job_name="sample",outcome="ok"}']
        per_run = cfg.sampling.prompts_per_round * cfg.sampling.samples_per_prompt
        assert runs >= 1  # a later run may have finished too: expectations scale with it
        samples = sum(v for k, v in scraped.items() if k.startswith("loopd_samples_total{"))
        assert samples >= runs * per_run  # summed over adapter and outcome
        assert samples % per_run == 0  # whole runs only
        status = httpx.get(f"{url}/status").json()
        assert status["counts"]["samples"] >= samples
        assert status["counts"]["samples"] % per_run == 0
        assert httpx.get(f"{url}/nope").status_code == 404

        def broken() -> None:
            raise RuntimeError("serving went away")

        assert daemon.run_job("sample", broken) is False  # logged and counted, not raised
        value = daemon.metrics.registry.get_sample_value(
            "loopd_job_runs_total", {"job_name": "sample", "outcome": "error"}
        )
        assert value == 1.0
        assert daemon.run_job("sample", loop.sample_round) is True  # and the next run works
    finally:
        daemon.stop()


def test_cli_daemon_logs_json_and_stops_on_sigterm(config_file: Path) -> None:
    path = config_file
    child = subprocess.Popen(
        [sys.executable, "-m", "loopd", "run", "--config", str(path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in child.stderr:
            if line.startswith("{"):
                lines.append(json.loads(line))
            if {"daemon ready", "sampled"} <= {entry["msg"] for entry in lines}:
                break
        ready = next(entry for entry in lines if entry["msg"] == "daemon ready")
        assert httpx.get(f"http://127.0.0.1:{ready['port']}/healthz").status_code == 200
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == 0
        tail = [
            json.loads(line) for line in child.stderr.read().splitlines() if line.startswith("{")
        ]
        assert any(entry["msg"] == "daemon stopping" for entry in tail)
    finally:
        child.kill()


def test_a_malformed_prompt_file_is_a_clear_error(config: LoopdConfig, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "x"}\n{"id": "b"}\n')
    path = tmp_path / "loopd.toml"
    path.write_text(
        f'state_dir = "{config.state_dir}"\n[model]\nbase = "{config.model.base}"\n'
        f'[sampling]\nprompts = ["{prompts}"]\n[gate]\nheldout = "{config.gate.heldout}"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "loopd", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    [entry] = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert entry["level"] == "error"
    assert f"{prompts}:2: give exactly one of 'prompt' (text) or 'messages'" in entry["error"]

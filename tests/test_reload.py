"""Config changes while the daemon runs: by file change, SIGHUP and POST /admin/reload.

A valid change takes effect at the next job without a restart; a bad one (unparsable, a
field out of range, a field only a restart can change) is refused, names the field, and
leaves the running config exactly as it was. Every wait is on a condition with a
generous deadline: a loaded CI machine only makes them slower.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from loopd.backends.local import LocalBackend
from loopd.cli import main
from loopd.config import load_config
from loopd.daemon import Daemon
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.reload import diff, restart_needed
from loopd.store import Store

DEADLINE_S = 300.0
# Thresholds no loop of the embedded model's 48-token answers can reach: every floor,
# the short-loop ones included, out of reach, and no item-set rule.
DETECT_NOTHING = (
    "[detector]\nmin_loop_chars = 100000\nmin_symbol_loop_chars = 100000\n"
    "min_symbol_run_chars = 100000\nmin_loop_tokens = 3000\nmin_short_loop_chars = 100000\n"
    "min_short_loop_tokens = 3000\nmin_many_repeats_chars = 100000\nitem_sets = false\n"
)


def wait_for(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {DEADLINE_S:.0f} s: {what}"
        time.sleep(0.2)


def metric(daemon: Daemon, name: str, **labels: str) -> float:
    return daemon.metrics.registry.get_sample_value(name, labels) or 0.0


def sample_runs(daemon: Daemon) -> float:
    return metric(daemon, "loopd_job_runs_total", job_name="sample", outcome="ok")


@pytest.fixture
def running(config_file: Path) -> Iterator[Daemon]:
    """A real daemon on the embedded model, started from ``config_file`` and watching it."""
    with daemon_from(config_file) as daemon:
        yield daemon


@contextlib.contextmanager
def daemon_from(config_file: Path) -> Iterator[Daemon]:
    cfg = load_config(config_file)
    inputs = resolve_inputs(cfg)
    loop = Loop(
        cfg, inputs, backend=LocalBackend(inputs.base_model, threads=1), store=Store(cfg.db_path)
    )
    daemon = Daemon(loop, config_path=config_file)
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_a_changed_file_changes_the_interval_and_the_detector_at_the_next_job(
    running: Daemon, config_file: Path
) -> None:
    daemon, store = running, running.loop.store
    wait_for(lambda: sample_runs(daemon) >= 1, "the first sampling job")
    looped = store.db.execute("SELECT count(*) FROM samples WHERE degenerate = 1").fetchone()[0]
    assert looped > 0  # the embedded model loops on about a third of its prompts
    before = store.max_sample_id()

    text = config_file.read_text().replace("interval_seconds = 3600", "interval_seconds = 1")
    config_file.write_text(text + DETECT_NOTHING)  # an hour between jobs -> one second
    wait_for(lambda: metric(daemon, "loopd_config_reloads_total", result="applied") >= 1, "reload")
    assert daemon.cfg.sampling.interval_seconds == 1
    assert daemon.cfg.detector.min_loop_chars == 100000
    assert metric(daemon, "loopd_config_generation") == 2

    runs = sample_runs(daemon)
    wait_for(lambda: sample_runs(daemon) >= runs + 2, "two jobs a second apart, not an hour")
    after = list(store.db.query("SELECT degenerate FROM samples WHERE id > ?", [before]))
    assert after and not any(row["degenerate"] for row in after)  # the new thresholds judged them

    reloaded = store.last_event(["config_applied"])
    assert reloaded is not None
    changes = reloaded["payload"]["changes"]
    assert changes["sampling.interval_seconds"] == {"old": 3600.0, "new": 1.0}
    assert changes["detector.min_loop_tokens"] == {"old": 48, "new": 3000}


def test_a_bad_file_is_refused_and_the_old_config_keeps_running(
    running: Daemon, config_file: Path
) -> None:
    daemon = running
    wait_for(lambda: sample_runs(daemon) >= 1, "the first sampling job")
    in_force = daemon.cfg
    for bad in ("[sampling\n", "[pairing]\nresample_temperature = -1\n"):
        rejected = metric(daemon, "loopd_config_reloads_total", result="rejected")
        config_file.write_text(config_file.read_text() + bad)
        wait_for(
            lambda: metric(daemon, "loopd_config_reloads_total", result="rejected") > rejected,  # noqa: B023
            "the bad file refused",
        )
        assert daemon.cfg is in_force
        assert metric(daemon, "loopd_config_generation") == 1
        config_file.write_text(config_file.read_text().replace(bad, ""))
    problems = daemon.loop.store.last_event(["config_rejected"])["payload"]["problems"]
    assert any(p.startswith("pairing.resample_temperature:") for p in problems), problems
    assert daemon.run_job("sample", daemon.loop.sample_round)  # still working as before


def test_the_endpoint_reloads_names_bad_fields_and_refuses_restart_only_ones(
    config_file: Path, admin_headers: dict[str, str]
) -> None:
    original = config_file.read_text() + "watch_config = false\n"  # in [daemon]: endpoint only
    config_file.write_text(original)
    with daemon_from(config_file) as daemon:
        _reload_through_the_endpoint(daemon, config_file, original, admin_headers)


def _reload_through_the_endpoint(
    daemon: Daemon, config_file: Path, original: str, admin_headers: dict[str, str]
) -> None:
    url = f"http://127.0.0.1:{daemon.port}/admin/reload"

    config_file.write_text(original + "[pairing]\nresample_attempts = 5\n")
    assert httpx.post(url, timeout=60).status_code == 401  # no token: nothing reloaded
    assert daemon.cfg.pairing.resample_attempts != 5
    applied = httpx.post(url, headers=admin_headers, timeout=60)
    assert applied.status_code == 200, applied.text
    body = applied.json()
    assert body["result"] == "applied" and body["generation"] == 2
    assert body["changes"] == {"pairing.resample_attempts": {"old": 2, "new": 5}}
    assert daemon.cfg.pairing.resample_attempts == 5
    assert httpx.post(url, headers=admin_headers, timeout=60).json()["result"] == "unchanged"

    config_file.write_text(original.replace("port = 0", "port = 9") + "[training]\nbeta = -1\n")
    refused = httpx.post(url, headers=admin_headers, timeout=60)
    assert refused.status_code == 400
    assert any(p.startswith("training.beta:") for p in refused.json()["problems"]), refused.text

    config_file.write_text(original.replace("port = 0", "port = 9"))
    refused = httpx.post(url, headers=admin_headers, timeout=60)
    assert refused.status_code == 400
    [problem] = refused.json()["problems"]
    assert problem.startswith("daemon.port: needs a restart")
    assert daemon.cfg.pairing.resample_attempts == 5 and daemon.cfg.daemon.port == 0
    status = httpx.get(f"http://127.0.0.1:{daemon.port}/status", timeout=60).json()
    assert status["daemon"]["config_generation"] == 2
    assert status["config"]["pairing"]["resample_attempts"] == 5
    assert status["config"]["daemon"]["admin_token"] == "**********"  # never the secret


def test_loopd_status_shows_the_running_daemons_jobs(
    running: Daemon, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wait_for(lambda: sample_runs(running) >= 1, "the first sampling job")
    assert main(["status", "--config", str(config_file)]) == 0
    lines = [
        " ".join(line.replace("│", " ").split()) for line in capsys.readouterr().out.splitlines()
    ]
    assert "jobs: running; config generation 1" in lines
    jobs = {line.split()[0]: line for line in lines if line.split()[:1] in (["sample"], ["train"])}
    assert set(jobs) == {"sample", "train"} and "interval[1:00:00]" in jobs["sample"]
    assert main(["status", "--config", str(config_file), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert {job["id"] for job in document["daemon"]["jobs"]} == {"sample", "train", "retention"}


def test_sighup_reloads_a_running_loopd_and_a_bad_file_does_not_stop_it(
    config_file: Path,
) -> None:
    original = config_file.read_text() + "watch_config = false\n"  # in [daemon]: SIGHUP only
    config_file.write_text(original)
    child = subprocess.Popen(
        [sys.executable, "-m", "loopd", "run", "--config", str(config_file)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        logs = _json_lines(child)
        ready = _until(logs, "daemon ready")
        config_file.write_text(original + "[sampling\n")
        child.send_signal(signal.SIGHUP)
        rejected = _until(logs, "config reload rejected; the running config stays")
        assert rejected["source"] == "signal" and "not valid TOML" in rejected["problems"][0]

        config_file.write_text(
            original.replace("train_check_seconds = 3600", "train_check_seconds = 5")
        )
        child.send_signal(signal.SIGHUP)
        applied = _until(logs, "config reloaded")
        assert applied["changes"] == {"daemon.train_check_seconds": {"old": 3600.0, "new": 5.0}}
        assert child.poll() is None  # SIGHUP no longer kills it
        scraped = httpx.get(f"http://127.0.0.1:{ready['port']}/metrics", timeout=60).text
        assert 'loopd_config_reloads_total{result="rejected"} 1.0' in scraped
        assert 'loopd_config_reloads_total{result="applied"} 1.0' in scraped
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=120) == 0
    finally:
        child.kill()


def test_only_changed_leaves_count_and_secrets_compare_by_value(config_file: Path) -> None:
    cfg = load_config(config_file)
    assert diff(cfg, load_config(config_file)) == {}
    token = cfg.daemon.admin_token.get_secret_value()
    rotated = config_file.read_text().replace(token, token[::-1])
    config_file.write_text(rotated)
    changes = diff(cfg, load_config(config_file))
    assert list(changes) == ["daemon.admin_token"] and restart_needed(changes) == []


def _json_lines(child: subprocess.Popen) -> Iterator[dict]:
    assert child.stderr is not None
    for line in child.stderr:
        if line.startswith("{"):
            yield json.loads(line)


def _until(logs: Iterator[dict], message: str) -> dict:
    """The next log entry with ``message`` (the child's stderr ends if it dies)."""
    for entry in logs:
        if entry["msg"] == message:
            return entry
    raise AssertionError(f"loopd exited before logging {message!r}")

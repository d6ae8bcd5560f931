"""The daemon's admin API on a real daemon: the token guards every verb, a pause outlives
a restart, and an operator can start a round now.

Waits are on conditions with generous deadlines, never on the clock.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import httpx
from apscheduler.schedulers.base import STATE_PAUSED, STATE_RUNNING

from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig
from loopd.daemon import Daemon
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.store import Store

DEADLINE_S = 600.0
ADMIN_ROUTES = [
    "/admin/reload",
    "/admin/pause",
    "/admin/resume",
    "/admin/rounds",
    "/admin/adapters/1/promote",
    "/admin/adapters/1/pin",
    "/admin/adapters/rollback",
    "/admin/adapters/unpin",
]


def wait_for(predicate: Callable[[], object], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"not reached in {DEADLINE_S:.0f} s: {what}"
        time.sleep(0.2)


@contextlib.contextmanager
def running(cfg: LoopdConfig) -> Iterator[tuple[Daemon, httpx.Client]]:
    inputs = resolve_inputs(cfg)
    backend = LocalBackend(inputs.base_model, threads=1)
    daemon = Daemon(Loop(cfg, inputs, backend=backend, store=Store(cfg.db_path)))
    daemon.start()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{daemon.port}", timeout=120) as client:
            yield daemon, client
    finally:
        daemon.stop()


def sample_runs(daemon: Daemon) -> float:
    labels = {"job_name": "sample", "outcome": "ok"}
    return daemon.metrics.registry.get_sample_value("loopd_job_runs_total", labels) or 0.0


def test_every_admin_verb_needs_the_token_and_a_refusal_changes_nothing(
    daemon_config: LoopdConfig,
) -> None:
    with running(daemon_config) as (daemon, client):
        wait_for(lambda: sample_runs(daemon) >= 1, "the first sampling job")
        before = daemon.loop.store.events(limit=1000)
        for route in ADMIN_ROUTES:
            for header in ({}, {"Authorization": "Bearer not-the-token-at-all"}):
                response = client.post(route, headers=header)
                assert response.status_code == 401, (route, response.text)
                assert "daemon.admin_token" in response.json()["error"]
        assert daemon.loop.store.events(limit=1000) == before  # no pause, reload, deploy
        assert daemon.loop.store.rounds() == [] and daemon.scheduler.state == STATE_RUNNING
        assert client.get("/healthz").text == "ok\n"
        assert client.get("/readyz").json()["ready"] is True

    no_admin = daemon_config.model_copy(
        update={"daemon": daemon_config.daemon.model_copy(update={"admin_token": None})}
    )
    with running(no_admin) as (_, client):
        response = client.post("/admin/pause", headers={"Authorization": "Bearer anything"})
        assert response.status_code == 403
        assert "admin API disabled" in response.json()["error"]


def test_a_pause_outlives_a_restart_until_resumed(
    daemon_config: LoopdConfig, admin_headers: dict[str, str]
) -> None:
    with running(daemon_config) as (daemon, client):
        wait_for(lambda: sample_runs(daemon) >= 1, "the first sampling job")
        paused = client.post("/admin/pause", headers=admin_headers)
        assert paused.status_code == 200 and paused.json()["paused"] is True
        assert daemon.scheduler.state == STATE_PAUSED
        assert daemon.metrics.registry.get_sample_value("loopd_jobs_paused") == 1
        assert client.get("/status").json()["daemon"]["paused"] is True

    with running(daemon_config) as (daemon, client):  # a restart, e.g. by systemd
        assert daemon.scheduler.state == STATE_PAUSED
        assert sample_runs(daemon) == 0  # the start's sampling job waits for the resume
        refused = client.post("/admin/rounds", headers=admin_headers)
        assert refused.status_code == 409 and "paused" in refused.json()["error"]
        resumed = client.post("/admin/resume", headers=admin_headers)
        assert resumed.status_code == 200 and resumed.json()["paused"] is False
        wait_for(lambda: sample_runs(daemon) >= 1, "sampling after the resume")
        assert daemon.metrics.registry.get_sample_value("loopd_jobs_paused") == 0


def test_an_operator_starts_a_round_now(
    daemon_config: LoopdConfig, admin_headers: dict[str, str]
) -> None:
    never_on_its_own = daemon_config.training.model_copy(update={"min_fresh_pairs": 10_000})
    cfg = daemon_config.model_copy(update={"training": never_on_its_own})
    with running(cfg) as (daemon, client):
        store = daemon.loop.store
        wait_for(lambda: sample_runs(daemon) >= 1, "the first sampling job")
        fresh = store.count_fresh_pairs()
        assert fresh > 0
        started = client.post("/admin/rounds", headers=admin_headers)
        assert started.status_code == 200, started.text
        assert started.json()["fresh_pairs"] == fresh
        wait_for(lambda: [r["status"] for r in store.rounds()] not in ([], ["running"]), "round")
        [round_row] = store.rounds()
        assert round_row["fresh_pairs"] == fresh
        assert round_row["status"] in ("promoted", "rejected", "blocked", "canary")
        assert store.count_fresh_pairs() == 0
        again = client.post("/admin/rounds", headers=admin_headers)
        assert again.status_code == 409 and "no fresh pairs" in again.json()["error"]


def test_unknown_paths_are_404_and_wrong_methods_405(daemon_config: LoopdConfig) -> None:
    with running(daemon_config) as (_, client):
        for path in ("/nope", "/admin", "/admin/nope", "/adapters/v1"):
            response = client.get(path)
            assert response.status_code == 404 and response.json()["error"], path
        assert client.get("/admin/pause").status_code == 405  # a verb is a POST
        assert client.delete("/status").status_code == 405

"""The daemon: runs the loop's stages as scheduled jobs beside its HTTP endpoints.

Jobs (APScheduler, one thread each):

- ``sample`` every ``sampling.interval_seconds``: sample → detect → store → pair;
- ``train`` every ``daemon.train_check_seconds``: a training round once enough fresh
  pairs exist (train → evaluate → gate → deploy);
- ``retention`` every ``daemon.retention_interval_seconds``;
- ``round``, once, when an operator asks for a round now (``POST /admin/rounds``).

A job never overlaps itself (``max_instances=1``, missed runs coalesced), and two rounds
never train at once. A job that raises is logged with its traceback and counted in
``loopd_job_runs_total{outcome="error"}``; the daemon carries on and the job runs again
at its next time. SIGTERM and SIGINT stop it cleanly: a training child is killed at
once, other running jobs get ``daemon.shutdown_timeout_seconds`` to finish, then the
server stops.

The config is reloaded without a restart on SIGHUP, when its file changes
(``daemon.watch_config``) and on ``POST /admin/reload`` (``loopd.reload`` decides
whether the new file may replace the running one). An operator can pause the jobs
(``POST /admin/pause``); a pause outlives a restart until ``POST /admin/resume``.

Serving down at start is not fatal: the daemon starts its endpoints (``/readyz`` says
503), and every job first retries recovery (loading the live adapter) until serving is
back; nothing runs against serving before that.

With ``proxy.enabled``, the OpenAI-compatible proxy (``loopd.proxy``) serves clients on
``proxy.port`` from the same process, and its URL is in ``daemon.json`` too. The
endpoints are in ``loopd.api``; the address the daemon listens on is written to
``STATE/daemon.json`` (mode 0600) so the CLI finds it even on port 0.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import watchfiles
from apscheduler.jobstores.base import ConflictingIdError
from apscheduler.schedulers.background import BackgroundScheduler

from loopd.api import ApiServer, Refused, build_app
from loopd.config import LoopdConfig
from loopd.loop import Loop
from loopd.metrics import Metrics
from loopd.proxy import ProxyServer
from loopd.reload import Reloader, ReloadResult, redacted
from loopd.status import snapshot

log = logging.getLogger(__name__)

PAUSE_EVENTS = ("jobs_paused", "jobs_resumed")
SIGNAL_POLL_SECONDS = 0.5


class Daemon:
    def __init__(
        self,
        loop: Loop,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
        config_path: Path | None = None,
    ):
        self.loop = loop
        self.clock = clock
        self.metrics = (
            metrics
            or loop.metrics
            or Metrics(loop.store, adapter_prefix=loop.cfg.deploy.adapter_prefix)
        )
        loop.attach_metrics(self.metrics)
        self.metrics.serving_up.set_function(self._serving_up)
        self.scheduler = BackgroundScheduler(job_defaults={"max_instances": 1, "coalesce": True})
        self.stopped = threading.Event()  # set by stop(): ends the config watcher too
        self._shutdown = threading.Event()  # set by SIGTERM/SIGINT: run_forever stops
        self.recovered = threading.Event()
        self._recovering = threading.Lock()  # the sample and train jobs both try it
        self._training = threading.Lock()  # the train job and an operator's round
        self._pausing = threading.Lock()
        self.reloader = Reloader(
            config_path, loop.cfg, apply=self._apply_config, on_result=self._reloaded
        )
        self.http: ApiServer | None = None
        self.proxy: ProxyServer | None = None
        self._watcher: threading.Thread | None = None

    @property
    def cfg(self) -> LoopdConfig:
        """The config in force (replaced as a whole by a reload)."""
        return self.loop.cfg

    # -- jobs ------------------------------------------------------------------

    def _job_plan(self, cfg: LoopdConfig) -> dict[str, tuple[Callable[[], Any], float]]:
        """Each periodic job: its work and its period under ``cfg``."""
        return {
            "sample": (self.loop.sample_round, cfg.sampling.interval_seconds),
            "train": (self.train_if_ready, cfg.daemon.train_check_seconds),
            "retention": (self.retention, cfg.daemon.retention_interval_seconds),
        }

    def run_job(self, name: str, work: Callable[[], Any]) -> bool:
        """Run one job, counting and logging its outcome; never raises."""
        started = time.perf_counter()
        try:
            self.ensure_recovered()
            work()
        except Exception:
            log.exception("job failed", extra={"job": name})
            self.metrics.job_runs.labels(name, "error").inc()
            return False
        finally:
            self.metrics.job_seconds.labels(name).observe(time.perf_counter() - started)
        self.metrics.job_runs.labels(name, "ok").inc()
        self.metrics.job_last_success.labels(name).set(self.clock())
        return True

    def ensure_recovered(self) -> None:
        """Recover once (live adapter loaded, leftovers cleared); raise while serving is down."""
        with self._recovering:
            if self.recovered.is_set():
                return
            restored = self.loop.recover()
            self.recovered.set()
        log.info("recovery complete", extra={"live_version": restored and restored.version})

    def train_if_ready(self) -> None:
        if not self._training.acquire(blocking=False):
            return  # an operator's round is training; this check comes again
        try:
            if self.loop.ready_to_train():
                self._train()
        finally:
            self._training.release()

    def _train(self) -> None:
        report = self.loop.training_round()
        log.info("round finished", extra={"round": report.round_id, "status": report.status})

    def retention(self) -> None:
        cutoff = self.clock() - self.cfg.daemon.retention_days * 86400
        removed = self.loop.store.delete_old_samples(cutoff)
        if self.cfg.daemon.retention_max_samples is not None:
            removed += self.loop.store.delete_excess_samples(self.cfg.daemon.retention_max_samples)
        log.info("retention", extra={"removed_samples": removed})

    def _schedule(self, name: str, work: Callable[[], Any], seconds: float) -> None:
        self.scheduler.add_job(
            self.run_job,
            "interval",
            args=(name, work),
            seconds=seconds,
            id=name,
            next_run_time=_now(),
        )

    # -- the operator's verbs (POST /admin/...) ---------------------------------

    def start_round(self) -> dict[str, Any]:
        """Train a round now, whatever ``training.min_fresh_pairs`` says; refuse with why."""
        if self.paused:
            raise Refused(409, "jobs are paused: POST /admin/resume first")
        fresh = self.loop.store.count_fresh_pairs()
        if fresh == 0:
            raise Refused(409, "no fresh pairs: no loop has been paired since the last round")
        blocked = self.loop.canary_running() or self.loop.training_blocked()
        if blocked:
            raise Refused(409, blocked)
        if self._training.locked():
            raise Refused(409, "a training round is already running; see /status")
        try:
            self.scheduler.add_job(
                self.run_job, args=("round", self._operator_round), id="round", next_run_time=_now()
            )
        except ConflictingIdError:
            raise Refused(409, "a round asked for is already waiting to start") from None
        log.info("round asked for by the operator", extra={"fresh_pairs": fresh})
        return {"started": True, "fresh_pairs": fresh, "message": "round started; see /status"}

    def _operator_round(self) -> None:
        with self._training:
            self._train()

    @property
    def paused(self) -> bool:
        event = self.loop.store.last_event(PAUSE_EVENTS)
        return event is not None and event["kind"] == "jobs_paused"

    def pause(self, source: str) -> dict[str, Any]:
        """Stop starting jobs (a running one finishes); kept across restarts until resumed."""
        with self._pausing:
            if not self.paused:
                self.loop.store.record_event("jobs_paused", source=source)
                self.scheduler.pause()
                log.warning("jobs paused", extra={"source": source})
        self.metrics.jobs_paused.set(1)
        return {"paused": True, "message": "jobs paused: none starts until POST /admin/resume"}

    def resume(self, source: str) -> dict[str, Any]:
        with self._pausing:
            if self.paused:
                self.loop.store.record_event("jobs_resumed", source=source)
                self.scheduler.resume()
                log.info("jobs resumed", extra={"source": source})
        self.metrics.jobs_paused.set(0)
        return {"paused": False, "message": "jobs resumed"}

    def reload_config(self, source: str) -> dict[str, Any]:
        result = self.reloader.reload(source)
        if result.result == "rejected":
            raise Refused(400, "config rejected; the running config stays", **result.as_dict())
        return result.as_dict()

    def _apply_config(self, new: LoopdConfig) -> None:
        """Make ``new`` the config every later job reads; reschedule changed periods."""
        old_plan = self._job_plan(self.cfg)
        self.loop.reconfigure(new)
        if self.proxy is not None:
            self.proxy.reconfigure(new)
        for name, (_, seconds) in self._job_plan(new).items():
            if seconds != old_plan[name][1] and self.scheduler.get_job(name) is not None:
                self.scheduler.reschedule_job(name, trigger="interval", seconds=seconds)

    def _reloaded(self, result: ReloadResult) -> None:
        self.metrics.config_reloads.labels(result.result).inc()
        self.metrics.config_generation.set(result.generation)
        if result.result != "unchanged":
            self.loop.store.record_event(f"config_{result.result}", **result.as_dict())

    # -- what the endpoints read -------------------------------------------------

    def _serving_up(self) -> float:
        """``loopd_serving_up`` at scrape time: one health call, never an exception."""
        return 1.0 if _check(self.loop.backend.health)["ok"] else 0.0

    def readiness(self) -> dict[str, dict[str, Any]]:
        """Each condition for taking work: store open, serving reachable, live adapter loaded."""
        checks = {"store": _check(lambda: self.loop.store.db.execute("SELECT 1").fetchone())}
        checks["serving"] = _check(self.loop.backend.health)
        live = self.loop.deployer.live_name()
        loaded = self.recovered.is_set() and checks["serving"]["ok"]
        if loaded and live is not None:
            loaded = live in self.loop.backend.adapters()
        checks["live_adapter"] = {"ok": loaded, "name": live or "base"}
        return checks

    def status(self) -> dict[str, Any]:
        """``/status``: the database's story plus what only the process knows."""
        jobs = [
            {"id": job.id, "next_run_time": job.next_run_time, "trigger": str(job.trigger)}
            for job in self.scheduler.get_jobs()
        ]
        return {
            **snapshot(self.loop.store),
            "daemon": {
                "pid": os.getpid(),
                "paused": self.paused,
                "jobs": jobs,
                "config_path": self.reloader.path,
                "config_generation": self.reloader.generation,
            },
            "config": redacted(self.cfg),
        }

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        log.info("daemon starting", extra={"admin": self._admin_state()})
        try:
            self.ensure_recovered()
        except Exception as error:  # serving down: jobs retry recovery until it is back
            log.error("recovery failed; retried before every job", extra={"error": str(error)})
        self.metrics.config_generation.set(self.reloader.generation)
        self.http = ApiServer(build_app(self), self.cfg.daemon.host, self.cfg.daemon.port)
        self.http.start()
        if self.cfg.proxy.enabled:
            self.proxy = ProxyServer(self.loop, self.metrics.registry)
            self.proxy.start()
        self._write_address()
        for name, (work, seconds) in self._job_plan(self.cfg).items():
            self._schedule(name, work, seconds)
        paused = self.paused
        self.metrics.jobs_paused.set(1 if paused else 0)
        if paused:
            log.warning("jobs stay paused, as the operator left them: POST /admin/resume")
        self.scheduler.start(paused=paused)
        self._watch_config()

    def _watch_config(self) -> None:
        path = self.reloader.path
        if path is None or not self.cfg.daemon.watch_config:
            return
        self._watcher = threading.Thread(
            target=self._reload_on_change, args=(path.resolve(),), name="loopd-config", daemon=True
        )
        self._watcher.start()

    def _reload_on_change(self, path: Path) -> None:
        """Reload whenever the file changes (editors that write a new file and rename it too)."""
        changes = watchfiles.watch(
            path.parent,
            recursive=False,  # the state folder may sit below it: its writes are not ours
            watch_filter=lambda _, changed: Path(changed) == path,
            stop_event=self.stopped,
            raise_interrupt=False,
        )
        for _ in changes:
            if path.exists():  # mid-replace: the next change event brings the new file
                self.reloader.reload("file")

    @property
    def address_file(self):
        return self.cfg.state_dir / "daemon.json"

    def _admin_state(self) -> str:
        if self.cfg.daemon.admin_token is None:
            return "disabled: set daemon.admin_token (or $LOOPD_ADMIN_TOKEN) to enable it"
        return "enabled (bearer token)"

    def authorized(self, header: str | None) -> bool:
        """Constant-time check of an ``Authorization: Bearer …`` header."""
        token = self.cfg.daemon.admin_token
        if token is None or header is None:
            return False
        expected = f"Bearer {token.get_secret_value()}".encode()
        return hmac.compare_digest(header.encode(), expected)

    def _write_address(self) -> None:
        address = {"host": self.cfg.daemon.host, "port": self.port, "pid": os.getpid()}
        if self.proxy is not None:
            address["proxy"] = self.proxy.url
        staging = self.address_file.with_suffix(".json.tmp")
        staging.write_text(json.dumps(address))
        staging.chmod(0o600)
        staging.replace(self.address_file)

    @property
    def port(self) -> int:
        return self.http.port if self.http else 0

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        self.loop.cancel.set()
        log.info("daemon stopping")
        if self.proxy is not None:  # first: no new traffic, and what it served is stored
            self.proxy.stop(self.cfg.daemon.shutdown_timeout_seconds)
        self._stop_jobs(self.cfg.daemon.shutdown_timeout_seconds)
        if self.http is not None:
            self.http.stop()
            self.address_file.unlink(missing_ok=True)
        self.loop.backend.close()

    def _stop_jobs(self, timeout: float) -> None:
        """Let running jobs finish, but not forever: a hung job must not block exit."""
        stopper = threading.Thread(target=self.scheduler.shutdown, kwargs={"wait": True})
        stopper.start()
        stopper.join(timeout)
        if stopper.is_alive():
            log.warning(
                "jobs still running at shutdown; exiting anyway", extra={"after_s": timeout}
            )

    def run_forever(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then stop cleanly; SIGHUP reloads."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self._shutdown.set())
        signal.signal(signal.SIGHUP, lambda *_: self._reload_in_background("signal"))
        self.start()
        log.info("daemon ready", extra={"port": self.port})
        # Python runs signal handlers on the main thread, between bytecodes; the kernel may
        # deliver the signal to any thread, so a main thread blocked in one endless wait
        # would not see it until it woke. Waking twice a second it always does.
        while not self._shutdown.wait(SIGNAL_POLL_SECONDS):
            pass
        self.stop()

    def _reload_in_background(self, source: str) -> None:
        """A signal handler must return at once: the reload runs on a thread of its own."""
        threading.Thread(target=self.reloader.reload, args=(source,), daemon=True).start()


def _now() -> datetime:
    return datetime.now(UTC)


def _check(probe: Callable[[], Any]) -> dict[str, Any]:
    try:
        return {"ok": bool(probe() is not False)}
    except Exception as error:
        return {"ok": False, "error": str(error)[:200]}

"""The daemon: runs the loop's stages as scheduled jobs beside a small HTTP server.

Jobs (APScheduler, one thread each):

- ``sample`` every ``sampling.interval_seconds``: sample → detect → store → pair;
- ``train`` every ``daemon.train_check_seconds``: a training round once enough fresh
  pairs exist (train → evaluate → gate → deploy);
- ``retention`` every ``daemon.retention_interval_seconds``.

A job never overlaps itself (``max_instances=1``, missed runs coalesced). A job that
raises is logged with its traceback and counted in ``loopd_job_runs{outcome="error"}``;
the daemon carries on and the job runs again at its next time. SIGTERM and SIGINT stop
it cleanly: a training child is killed at once, other running jobs get
``daemon.shutdown_timeout_seconds`` to finish, then the server stops.

Serving down at start is not fatal: the daemon starts its endpoints (``/healthz`` says
503), and every job first retries recovery (loading the live adapter) until serving is
back; nothing runs against serving before that.

With ``proxy.enabled``, the OpenAI-compatible proxy (``loopd.proxy``) serves clients on
``proxy.port`` from the same process, and its URL is in ``daemon.json`` too.

HTTP: ``/metrics`` (Prometheus), ``/healthz`` (serving reachable), ``/status`` (JSON),
and the operator's adapter verbs (``loopd adapters``): ``GET /adapters``,
``GET /adapters/N``, ``POST /adapters/N/promote``, ``POST /adapters/N/pin``,
``POST /adapters/rollback``, ``POST /adapters/unpin``. Every POST needs
``Authorization: Bearer <daemon.admin_token>`` (401 without it, compared in constant
time; 403 when no token is configured: admin disabled). A refused verb (a pin, nothing
to roll back) is a 409 with the reason; an unknown version a 404; serving that cannot
load the adapter a 502, with the old adapter still live. The address the daemon
listens on is written to ``STATE/daemon.json`` (mode 0600) so the CLI finds it even on
port 0.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from loopd import control
from loopd.deploy import DeployFailed, DeployRefused
from loopd.loop import Loop
from loopd.metrics import Metrics
from loopd.proxy import ProxyServer
from loopd.status import snapshot

log = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self,
        loop: Loop,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.loop = loop
        self.cfg = loop.cfg
        self.clock = clock
        self.metrics = metrics or Metrics(loop.store)
        self.scheduler = BackgroundScheduler(job_defaults={"max_instances": 1, "coalesce": True})
        self.stopped = threading.Event()
        self.recovered = threading.Event()
        self._recovering = threading.Lock()  # the sample and train jobs both try it
        self.http: ThreadingHTTPServer | None = None
        self.proxy: ProxyServer | None = None

    # -- jobs ------------------------------------------------------------------

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
        if self.loop.ready_to_train():
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

    # -- life cycle ------------------------------------------------------------

    def start(self) -> None:
        log.info("daemon starting", extra={"admin": self._admin_state()})
        try:
            self.ensure_recovered()
        except Exception as error:  # serving down: jobs retry recovery until it is back
            log.error("recovery failed; retried before every job", extra={"error": str(error)})
        self.http = _serve_http(self, self.cfg.daemon.host, self.cfg.daemon.port)
        if self.cfg.proxy.enabled:
            self.proxy = ProxyServer(self.loop, self.metrics.registry)
            self.proxy.start()
        self._write_address()
        self._schedule("sample", self.loop.sample_round, self.cfg.sampling.interval_seconds)
        self._schedule("train", self.train_if_ready, self.cfg.daemon.train_check_seconds)
        self._schedule("retention", self.retention, self.cfg.daemon.retention_interval_seconds)
        self.scheduler.start()

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
        return self.http.server_address[1] if self.http else 0

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
            self.http.shutdown()
            self.http.server_close()
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
        """Start, then block until SIGTERM or SIGINT, then stop cleanly."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopped.set())
        self.start()
        log.info("daemon ready", extra={"port": self.port})
        self.stopped.wait()
        self.stopped.clear()
        self.stop()


def _now() -> datetime:
    return datetime.now(UTC)


def _serve_http(daemon: Daemon, host: str, port: int) -> ThreadingHTTPServer:
    handler = type("LoopdHandler", (_Handler,), {"daemon": daemon})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="loopd-http", daemon=True).start()
    return server


class _Handler(BaseHTTPRequestHandler):
    daemon: Daemon

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._send(200, generate_latest(self.daemon.metrics.registry), CONTENT_TYPE_LATEST)
        elif self.path == "/healthz":
            healthy = self.daemon.loop.backend.health()
            self._send(200 if healthy else 503, b"ok\n" if healthy else b"serving unreachable\n")
        elif self.path == "/status":
            self._json(200, snapshot(self.daemon.loop.store))
        elif self.path == "/adapters":
            self._json(200, control.listing(self.daemon.loop.store))
        elif match := re.fullmatch(r"/adapters/(\d{1,30})", self.path):
            self._act(lambda: control.show(self.daemon.loop.store, int(match[1])))
        else:
            self._send(404, b"not found: try /metrics, /healthz, /status or /adapters\n")

    def do_POST(self) -> None:
        if not self._admin_allowed():
            return
        deployer = self.daemon.loop.deployer
        if match := re.fullmatch(r"/adapters/(\d{1,30})/(promote|pin)", self.path):
            verb = control.ACTIONS[match[2]]
            self._act(lambda: verb(deployer, int(match[1])).__dict__)
        elif match := re.fullmatch(r"/adapters/(rollback|unpin)", self.path):
            verb = control.PLAIN_ACTIONS[match[1]]
            self._act(lambda: verb(deployer).__dict__)
        else:
            self._json(404, {"error": f"no such action: POST {self.path}"})

    def _admin_allowed(self) -> bool:
        if self.daemon.cfg.daemon.admin_token is None:
            self._json(403, {"error": "admin API disabled: set daemon.admin_token and restart"})
            return False
        if not self.daemon.authorized(self.headers.get("Authorization")):
            self._json(401, {"error": "missing or wrong bearer token (daemon.admin_token)"})
            return False
        return True

    def _act(self, action: Callable[[], Any]) -> None:
        """Run an operator's verb; policy refusals and bad versions are 4xx, not 500s."""
        try:
            self._json(200, action())
        except control.UnknownVersion as error:
            self._json(404, {"error": str(error)})
        except DeployRefused as error:
            self._json(409, {"error": str(error)})
        except DeployFailed as error:
            self._json(502, {"error": str(error)})

    def _json(self, code: int, body: Any) -> None:
        self._send(code, json.dumps(body, default=str).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http", extra={"request": format % args})

"""The daemon's HTTP endpoints: a Starlette app, served by uvicorn on a thread of its own.

Open to anyone who can reach the port (loopback unless ``daemon.host`` says otherwise):

- ``GET /metrics``   Prometheus exposition;
- ``GET /healthz``   the process answers (liveness: restart it if this fails);
- ``GET /readyz``    store open, serving reachable, live adapter loaded (readiness);
- ``GET /status``    JSON: live adapter, rates, rounds, jobs, the config in force;
- ``GET /adapters``, ``GET /adapters/N``   the adapter versions.

Under ``/admin/``, each needing ``Authorization: Bearer <daemon.admin_token>`` (compared
in constant time; 401 without or with a wrong one; 403 when no token is configured,
which the daemon says at start): ``POST /admin/reload``, ``/admin/pause``,
``/admin/resume``, ``/admin/rounds`` (a training round now), and the adapter verbs
``/admin/adapters/N/promote``, ``/admin/adapters/N/pin``, ``/admin/adapters/rollback``,
``/admin/adapters/unpin``. Refusals are 4xx with ``{"error": …}``: a policy refusal
(pinned, nothing to roll back, a round already running) 409, an unknown version 404, a
rejected config 400 with every problem; serving that cannot load an adapter 502, the old
adapter still live.

Handlers are plain functions (Starlette runs them on its thread pool): the work behind
them — SQLite, loading an adapter — blocks, and must not stall the event loop.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from loopd import control
from loopd.deploy import DeployFailed, DeployRefused

if TYPE_CHECKING:
    from loopd.daemon import Daemon

VERSION = re.compile(r"\d{1,30}")  # longer digit runs are no version (and int() would balk)


class Refused(Exception):
    """An admin request the daemon will not carry out now; ``status`` is the HTTP code."""

    def __init__(self, status: int, message: str, **details: Any):
        super().__init__(message)
        self.status = status
        self.details = details


def build_app(daemon: Daemon) -> Starlette:
    def admin(action: Callable[[Request], Any]) -> Callable[[Request], Response]:
        def endpoint(request: Request) -> Response:
            denied = _denied(daemon, request.headers.get("Authorization"))
            return denied or _answer(lambda: action(request))

        return endpoint

    def adapter_verb(verb: str) -> Callable[[Request], Any]:
        if verb in control.ACTIONS:
            act = control.ACTIONS[verb]
            return lambda request: act(daemon.loop.deployer, _version(request)).__dict__
        plain = control.PLAIN_ACTIONS[verb]
        return lambda request: plain(daemon.loop.deployer).__dict__

    routes = [
        Route("/metrics", lambda _: _metrics(daemon)),
        Route("/healthz", lambda _: PlainTextResponse("ok\n")),
        Route("/readyz", lambda _: _readiness(daemon)),
        Route("/status", lambda _: JSONResponse(_jsonable(daemon.status()))),
        Route("/adapters", lambda _: _answer(lambda: control.listing(daemon.loop.store))),
        Route(
            "/adapters/{version}",
            lambda r: _answer(lambda: control.show(daemon.loop.store, _version(r))),
        ),
        Route("/admin/reload", admin(lambda _: daemon.reload_config("endpoint")), methods=["POST"]),
        Route("/admin/pause", admin(lambda _: daemon.pause("endpoint")), methods=["POST"]),
        Route("/admin/resume", admin(lambda _: daemon.resume("endpoint")), methods=["POST"]),
        Route("/admin/rounds", admin(lambda _: daemon.start_round()), methods=["POST"]),
        *(
            Route(
                f"/admin/adapters/{{version}}/{verb}", admin(adapter_verb(verb)), methods=["POST"]
            )
            for verb in control.ACTIONS
        ),
        *(
            Route(f"/admin/adapters/{verb}", admin(adapter_verb(verb)), methods=["POST"])
            for verb in control.PLAIN_ACTIONS
        ),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


def _metrics(daemon: Daemon) -> Response:
    return Response(generate_latest(daemon.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _readiness(daemon: Daemon) -> Response:
    checks = daemon.readiness()
    ready = all(check["ok"] for check in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


def _denied(daemon: Daemon, header: str | None) -> Response | None:
    if daemon.cfg.daemon.admin_token is None:
        return _error(403, "admin API disabled: set daemon.admin_token (or $LOOPD_ADMIN_TOKEN)")
    if not daemon.authorized(header):
        return _error(401, "missing or wrong bearer token (daemon.admin_token)")
    return None


def _answer(action: Callable[[], Any]) -> Response:
    """Run a verb; refusals, unknown versions and serving failures are 4xx/502, not 500s."""
    try:
        return JSONResponse(_jsonable(action()))
    except Refused as error:
        return _error(error.status, str(error), **error.details)
    except control.UnknownVersion as error:
        return _error(404, str(error))
    except DeployRefused as error:
        return _error(409, str(error))
    except DeployFailed as error:
        return _error(502, str(error))


def _version(request: Request) -> int:
    text = request.path_params["version"]
    if not VERSION.fullmatch(text):
        raise control.UnknownVersion(f"no adapter version {text[:40]!r}: give a number, as 3")
    return int(text)


def _http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, HTTPException)
    if error.status_code == 404:
        return _error(404, f"not found: {request.url.path[:200]}; try /status or /metrics")
    return _error(error.status_code, str(error.detail))


def _error(status: int, message: str, **details: Any) -> Response:
    return JSONResponse(_jsonable({"error": message, **details}), status_code=status)


def _jsonable(value: Any) -> Any:
    """Plain JSON data: what the store hands back may hold paths and timestamps."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class ApiServer:
    """uvicorn serving the app on a thread of its own; ``start`` returns once it listens."""

    def __init__(self, app: Starlette, host: str, port: int):
        config = uvicorn.Config(
            app, host=host, port=port, log_level="warning", access_log=False, lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="loopd-http", daemon=True)
        self.host = host

    def start(self, timeout_s: float = 60.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the daemon could not listen on {self.host}:{self._server.config.port} "
                    "(see the log above); change daemon.port"
                )
            time.sleep(0.02)

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the socket is bound to."""
        return self._server.servers[0].sockets[0].getsockname()[:2]

    @property
    def port(self) -> int:
        return self.address[1]

    def stop(self, timeout_s: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout_s)

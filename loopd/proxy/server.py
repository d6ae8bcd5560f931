"""The proxy's HTTP server: a Starlette app under uvicorn, inside the daemon.

It shares the daemon's backend (so a request and a swap see the same adapters), its
store and its metrics registry. In front of vLLM it serves on the backend's own event
loop, where the upstream connections live: a request then reaches vLLM and comes back
without crossing threads (each crossing is a GIL hand-off, and under load those cost
more than the proxy's own work). In front of the in-process engine, whose generation
runs on worker threads anyway, it has a thread of its own. ``start`` returns once the
socket listens; ``stop`` ends the server (in-flight requests finish), then stores what
the recorder still holds.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import Future

import uvicorn
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.routing import Route

from loopd.backends.local import LocalBackend
from loopd.backends.vllm import VllmBackend
from loopd.config import LoopdConfig
from loopd.loop import Loop
from loopd.proxy.metrics import ProxyMetrics
from loopd.proxy.recorder import SampleRecorder
from loopd.proxy.redact import Redactor
from loopd.proxy.routing import ModelRouter
from loopd.proxy.service import ProxyService
from loopd.proxy.upstream import LocalUpstream, Upstream, VllmUpstream

log = logging.getLogger(__name__)


def build_app(service: ProxyService) -> Starlette:
    return Starlette(
        routes=[
            Route("/v1/models", service.models, methods=["GET"]),
            Route("/v1/completions", service.completions, methods=["POST"]),
            Route("/v1/chat/completions", service.chat, methods=["POST"]),
            Route("/v1/loopd/samples", service.ingest, methods=["POST"]),
        ]
    )


def upstream_for(loop: Loop) -> Upstream:
    backend = loop.backend
    if isinstance(backend, VllmBackend):
        return VllmUpstream(backend)
    if isinstance(backend, LocalBackend):
        return LocalUpstream(backend, default_max_tokens=loop.cfg.serving.max_tokens)
    raise TypeError(f"the proxy cannot serve through {type(backend).__name__}")


class ProxyServer:
    def __init__(self, loop: Loop, registry: CollectorRegistry):
        cfg = loop.cfg
        self.metrics = ProxyMetrics(registry)
        self.recorder = (
            SampleRecorder(loop.store, loop.detect, self.metrics,
                           queue_size=cfg.proxy.queue_size, batch=cfg.proxy.write_batch)
            if cfg.proxy.record else None
        )  # fmt: skip
        router = ModelRouter(
            cfg.proxy.model_name, loop.deployer.live_name, version_prefix=cfg.deploy.adapter_prefix
        )
        self.service = ProxyService(
            cfg.proxy,
            router=router,
            upstream=upstream_for(loop),
            recorder=self.recorder,
            detector=cfg.detector,
            metrics=self.metrics,
            store=loop.store,
            detect=loop.detect,
            redactor=Redactor(cfg.proxy.redact_patterns, cfg.proxy.redact_with),
        )
        config = uvicorn.Config(
            build_app(self.service),
            host=cfg.proxy.host,
            port=cfg.proxy.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=30,  # in-flight answers finish; a hung one cannot block
        )
        self._server = uvicorn.Server(config)
        self._backend = loop.backend
        self._serving: Future[None] | threading.Thread | None = None

    def reconfigure(self, cfg: LoopdConfig) -> None:
        self.service.reconfigure(cfg.proxy, cfg.detector)

    def start(self, timeout_s: float = 60.0) -> None:
        if self.recorder is not None:
            self.recorder.start()
        self._serving = self._serve()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._running() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the proxy could not listen on {self.service.cfg.host}:"
                    f"{self.service.cfg.port} (see the log above); change proxy.port"
                )
            time.sleep(0.02)
        log.info("proxy listening", extra={"url": self.url})

    def _serve(self) -> Future[None] | threading.Thread:
        if isinstance(self._backend, VllmBackend):
            return self._backend.submit(self._server.serve())
        thread = threading.Thread(target=self._server.run, name="loopd-proxy", daemon=True)
        thread.start()
        return thread

    def _running(self) -> bool:
        if isinstance(self._serving, threading.Thread):
            return self._serving.is_alive()
        return self._serving is not None and not self._serving.done()

    def _wait_stopped(self, timeout_s: float) -> None:
        if isinstance(self._serving, threading.Thread):
            self._serving.join(timeout_s)
        elif self._serving is not None:
            with contextlib.suppress(Exception):
                self._serving.result(timeout_s)

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.service.cfg.host}:{self.port}"

    def stop(self, timeout_s: float = 60.0) -> None:
        self._server.should_exit = True
        self._wait_stopped(timeout_s)
        if self.recorder is not None:
            self.recorder.stop(timeout_s)

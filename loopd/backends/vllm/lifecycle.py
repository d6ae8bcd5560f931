"""The adapter life cycle on vLLM: load everywhere or nowhere, drain, reload after restarts.

``AdapterLifecycle`` owns loopd's view of what is loaded (``loaded``, name -> path, in load
order) and what is in flight per adapter, and keeps every endpoint in line with it: a load
is probed on every endpoint and rolled back on all of them if one fails; an unload waits
for the old name's requests to drain; ``reconcile`` reloads what a restarted server lost
and finishes unloads that failed while it was away; a monitor runs health checks (which
reconcile) so a restart is noticed even while no traffic flows. The HTTP itself is the
``EndpointPool``'s.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from loopd.backends.vllm.adapter_calls import AdapterCalls
from loopd.backends.vllm.client import Emit, Endpoint, EndpointPool
from loopd.backends.vllm.errors import (
    AdapterAlreadyLoadedError,
    AdapterNotLoadedError,
    AdapterUnavailableError,
    VllmAdapterError,
)
from loopd.backends.vllm.metrics import VllmMetrics

log = logging.getLogger("loopd.backends.vllm")


class AdapterLifecycle:
    """Adapters loopd loaded on the pool's endpoints; also the pool's ``AdapterHooks``."""

    def __init__(
        self, pool: EndpointPool, metrics: VllmMetrics, emit: Emit, clock: Callable[[], float]
    ):
        """Make on the pool's event loop (the locks and the monitor task belong to it)."""
        self.config = pool.config
        self.loaded: dict[str, str] = {}  # serving name -> path given to vLLM, in load order
        self.inflight: collections.Counter[str | None] = collections.Counter()
        self._pool = pool
        self._calls = AdapterCalls(pool, metrics)
        self._metrics = metrics
        self._emit = emit
        self._clock = clock
        self._last_start: dict[str | None, float] = {}
        self._pending_unload: dict[str, set[str]] = {}  # name -> endpoints that kept it
        self._retired: set[str] = set()  # drained, being unloaded: no new request may start
        self._admin_lock = asyncio.Lock()
        self._monitor: asyncio.Task[None] | None = None

    # -- AdapterHooks: what a generation retry asks ------------------------------------------

    def is_loaded(self, name: str) -> bool:
        return name in self.loaded

    async def on_adapter_missing(self, endpoint: Endpoint) -> None:
        """A 404 for a loaded adapter: the server restarted and lost it."""
        await self.reconcile_quietly(endpoint)

    async def reconcile_quietly(self, endpoint: Endpoint) -> None:
        """``_reconcile`` that logs a failure instead of raising it."""
        try:
            await self._reconcile(endpoint)
        except (httpx.HTTPError, VllmAdapterError) as error:
            log.warning("reconcile failed", extra={"endpoint": endpoint.url, "error": str(error)})

    @contextlib.contextmanager
    def in_flight(self, adapter: str | None) -> Iterator[None]:
        """Count a request on ``adapter`` for the block; refuses adapters not loaded.

        Enter it before the request's first await: an unload that starts later waits for it.
        """
        if adapter is not None and adapter in self._retired:
            raise AdapterNotLoadedError(f"adapter {adapter!r} was retired; route to the live one")
        if adapter is not None and adapter not in self.loaded:
            raise AdapterNotLoadedError(
                f"adapter {adapter!r} is not loaded (loaded: {list(self.loaded)}); load it "
                "before routing requests to it",
            )
        self.inflight[adapter] += 1
        self._last_start[adapter] = self._clock()
        self._metrics.inflight.inc()
        try:
            yield
        finally:
            self.inflight[adapter] -= 1
            self._metrics.inflight.dec()

    # -- load --------------------------------------------------------------------------------

    async def load(self, name: str, path: str) -> None:
        """Load + probe ``name`` on every endpoint, or roll back everywhere and raise."""
        async with self._admin_lock:
            if name in self.loaded:
                error = AdapterAlreadyLoadedError(
                    f"adapter {name!r} is already loaded by loopd; use a new name per version",
                    adapter=name,
                )
                self._load_failed(name, path, error, rolled_back=[])
                raise error
            started = time.perf_counter()
            await self._load_everywhere(name, path)
            self.loaded[name] = path
            seconds = time.perf_counter() - started
        self._metrics.load_seconds.observe(seconds)
        self._metrics.adapter_ops.labels("load", "ok").inc()
        log.info("adapter loaded", extra={"adapter": name, "path": path, "seconds": seconds})
        self._emit(
            "adapter_loaded",
            adapter=name,
            path=path,
            seconds=round(seconds, 4),
            endpoints=[e.url for e in self._pool.endpoints],
        )

    async def _load_everywhere(self, name: str, path: str) -> None:
        """All endpoints at once; on any failure unload from those that took it and raise."""
        endpoints = self._pool.endpoints
        results = await asyncio.gather(
            *(self._calls.load_and_probe(e, name, path) for e in endpoints), return_exceptions=True
        )
        took = [e for e, r in zip(endpoints, results, strict=True) if r is None]
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        await asyncio.gather(*(self._calls.unload(e, name) for e in took))
        error = errors[0]
        if not isinstance(error, VllmAdapterError):
            error = AdapterUnavailableError(
                f"loading adapter {name!r} failed: {error}", adapter=name
            )
        self._load_failed(name, path, error, rolled_back=[e.url for e in took])
        raise error

    def _load_failed(
        self, name: str, path: str, error: VllmAdapterError, *, rolled_back: list[str]
    ) -> None:
        self._metrics.adapter_ops.labels("load", error.kind).inc()
        log.warning(
            "adapter load failed",
            extra={"adapter": name, "path": path, "error": str(error), "kind": error.kind},
        )
        self._emit(
            "adapter_load_failed",
            adapter=name,
            path=path,
            error=error.kind,
            message=str(error),
            endpoint=error.endpoint,
            rolled_back_on=rolled_back,
        )

    # -- unload ------------------------------------------------------------------------------

    async def unload(self, name: str) -> None:
        """Drain in-flight requests on ``name`` (bounded), then unload it everywhere."""
        if name not in self.loaded:
            raise AdapterNotLoadedError(f"adapter {name!r} is not loaded by loopd")
        started = self._clock()
        drained = await self._drain(name)
        # No await since the drain found it idle: retired now, nothing can start on it
        # between that check and the unload (a request refused here is routed again).
        self._retired.add(name)
        waited = self._clock() - started
        self._metrics.drain_seconds.observe(waited)
        endpoints = self._pool.endpoints
        try:
            async with self._admin_lock:
                if self.loaded.pop(name, None) is None:
                    return  # a concurrent unload finished first
                gone = await asyncio.gather(*(self._calls.unload(e, name) for e in endpoints))
        finally:
            self._retired.discard(name)
        kept = {e.url for e, ok in zip(endpoints, gone, strict=True) if not ok}
        if kept:
            self._pending_unload[name] = kept
        self._unloaded(name, drained, waited, kept)

    def _unloaded(self, name: str, drained: bool, waited: float, kept: set[str]) -> None:
        outcome = "ok" if drained and not kept else ("drain_timeout" if not drained else "partial")
        self._metrics.adapter_ops.labels("unload", outcome).inc()
        log.info(
            "adapter unloaded",
            extra={
                "adapter": name,
                "drained": drained,
                "drain_s": waited,
                "pending_on": sorted(kept),
            },
        )
        self._emit(
            "adapter_unloaded",
            adapter=name,
            drained=drained,
            drain_seconds=round(waited, 4),
            inflight_left=self.inflight[name],
            pending_on=sorted(kept),
        )

    async def _drain(self, name: str) -> bool:
        """Wait until nothing is in flight on ``name`` and nothing started for a while."""
        deadline = self._clock() + self.config.drain_timeout_s
        while True:
            quiet = self._clock() - self._last_start.get(name, float("-inf"))
            if self.inflight[name] == 0 and quiet >= self.config.drain_quiet_s:
                return True
            if self._clock() >= deadline:
                log.warning(
                    "drain timed out", extra={"adapter": name, "inflight": self.inflight[name]}
                )
                return False
            await asyncio.sleep(0.02)

    # -- restarts ----------------------------------------------------------------------------

    async def reconcile_all(self) -> dict[str, list[str]]:
        """Reload on each reachable endpoint the adapters it lost: endpoint -> reloaded."""
        results = {}
        for endpoint in self._pool.endpoints:
            with contextlib.suppress(httpx.HTTPError, VllmAdapterError):
                results[endpoint.url] = await self._reconcile(endpoint)
        return results

    async def _reconcile(self, endpoint: Endpoint) -> list[str]:
        """Steps: (1) list served models; (2) reload what we loaded and it lacks (a
        restart); (3) finish unloads that failed while it was away.

        Holds the admin lock too, so a reload can never race an unload of the same name
        (which would leave an orphan on the server) or a load of a new one.
        """
        async with endpoint.reconcile_lock, self._admin_lock:
            served = await self._pool.served_models(endpoint)
            missing = [n for n in list(self.loaded) if n not in served]
            if missing:
                self._metrics.restarts.labels(endpoint.url).inc()
                log.warning(
                    "vllm lost adapters (restart?)",
                    extra={"endpoint": endpoint.url, "missing": missing},
                )
                self._emit("serving_restart_detected", endpoint=endpoint.url, missing=missing)
            failures: list[VllmAdapterError] = []
            for name in missing:
                if (error := await self._reload(endpoint, name)) is not None:
                    failures.append(error)
            await self._finish_unloads(endpoint, served)
            if failures:
                raise failures[0]
            return missing

    async def _reload(self, endpoint: Endpoint, name: str) -> VllmAdapterError | None:
        """Put ``name`` back on ``endpoint``; the error (reported) if that failed."""
        path = self.loaded[name]
        try:
            await self._calls.load_and_probe(endpoint, name, path)
        except VllmAdapterError as error:
            self._metrics.adapter_ops.labels("reload", error.kind).inc()
            self._emit(
                "adapter_reload_failed",
                adapter=name,
                endpoint=endpoint.url,
                error=error.kind,
                message=str(error),
            )
            return error
        self._metrics.adapter_ops.labels("reload", "ok").inc()
        self._emit("adapter_reloaded", adapter=name, endpoint=endpoint.url, path=path)
        return None

    async def _finish_unloads(self, endpoint: Endpoint, served: dict[str, dict[str, Any]]) -> None:
        """Unloads that failed on ``endpoint`` earlier: done if it no longer serves them."""
        for name, urls in list(self._pending_unload.items()):
            if endpoint.url in urls and (
                name not in served or await self._calls.unload(endpoint, name)
            ):
                urls.discard(endpoint.url)
                if not urls:
                    del self._pending_unload[name]

    # -- health ------------------------------------------------------------------------------

    async def health(self) -> bool:
        """Any endpoint healthy; healthy ones get their lost adapters reloaded."""
        healthy = await asyncio.gather(*(self._check(e) for e in self._pool.endpoints))
        return any(healthy)

    async def _check(self, endpoint: Endpoint) -> bool:
        try:
            response = await self._pool.admin_get(endpoint, "/health")
        except httpx.TransportError:
            endpoint.breaker.record_failure()
            return False
        if response.status_code != 200:
            endpoint.breaker.record_failure()
            return False
        endpoint.breaker.record_success()
        await self.reconcile_quietly(endpoint)
        return True

    def start_monitor(self) -> None:
        """Health checks every ``monitor_interval_s`` (0: none), on the running loop."""
        if self.config.monitor_interval_s > 0:
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())

    async def stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor

    async def _monitor_loop(self) -> None:
        """Notice restarts (and recoveries) while no traffic flows."""
        while True:
            await asyncio.sleep(self.config.monitor_interval_s)
            try:
                await self.health()
            except Exception:  # never let the monitor die; count it and go on
                log.exception("vllm monitor iteration failed")

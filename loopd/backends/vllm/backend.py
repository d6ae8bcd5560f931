"""``VllmBackend``: the sync ``ServingBackend`` over the async core, and generation.

The rest of loopd is sync, vLLM wants many requests at once: this module runs a private
event loop on its own thread, sends each sync call there and waits for it, and delivers
events to ``on_event`` on a third thread so a slow store never stalls a request. The loop
is uvloop's, and the proxy serves on it too (``submit``): a proxied request then crosses
no thread on its way to vLLM and back. The HTTP is ``EndpointPool``'s (``client``), the
adapter bookkeeping ``AdapterLifecycle``'s (``lifecycle``); the package docstring tells
the whole design.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import uvloop
from prometheus_client import CollectorRegistry

from loopd.backends.vllm.client import EndpointPool
from loopd.backends.vllm.completions import api_path, parse_completions, request_body, sse_chunks
from loopd.backends.vllm.errors import ServingError
from loopd.backends.vllm.lifecycle import AdapterLifecycle
from loopd.backends.vllm.metrics import VllmMetrics
from loopd.backends.vllm.streams import across_loops
from loopd.config.vllm import VllmConfig
from loopd.types import Completion, GenerationRequest

log = logging.getLogger("loopd.backends.vllm")
T = TypeVar("T")
EventHook = Callable[[str, dict[str, Any]], None]


class VllmBackend:
    """``ServingBackend`` over one or more vLLM OpenAI-compatible servers."""

    def __init__(
        self,
        config: VllmConfig,
        *,
        base_model_name: str | None = None,
        on_event: EventHook | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        """``base_model_name``: vLLM's served model name; unset = ``config.served_model_name``,
        else read from ``/v1/models``.

        ``on_event(kind, payload)`` hears adapter and breaker transitions (the daemon
        records them in the store); ``registry`` receives the backend's metrics;
        ``transport`` replaces the network in unit tests (``httpx.MockTransport``).
        """
        self.config = config
        self._on_event = on_event
        self._metrics = VllmMetrics(registry if registry is not None else CollectorRegistry())
        self._clock = clock
        self._rng = rng or random.Random()
        self._closed = False
        # Hooks run on their own thread, in order: a slow store write must never stall the
        # event loop that every request goes through.
        self._hooks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopd-vllm-events")
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="loopd-vllm", daemon=True
        )
        self._thread.start()
        self._call(self._setup(transport, base_model_name or config.served_model_name))

    async def _setup(self, transport: httpx.AsyncBaseTransport | None, base: str | None) -> None:
        """Client, locks and breakers are made on the loop thread that will use them."""
        self._pool = EndpointPool(
            self.config,
            self._metrics,
            self._event,
            clock=self._clock,
            rng=self._rng,
            transport=transport,
            base_model_name=base,
        )
        self._slots = asyncio.Semaphore(self.config.max_concurrent_requests)
        self._lifecycle = AdapterLifecycle(self._pool, self._metrics, self._event, self._clock)
        self._lifecycle.start_monitor()

    # -- state the tests look at ---------------------------------------------------------

    @property
    def _loaded(self) -> dict[str, str]:
        """Serving name -> path given to vLLM, in load order."""
        return self._lifecycle.loaded

    @property
    def _inflight(self) -> Counter[str | None]:
        return self._lifecycle.inflight

    @property
    def _base_name(self) -> str | None:
        return self._pool.base_name

    # -- sync facade (ServingBackend) ----------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return self._call(self.agenerate(requests))

    def load_adapter(self, name: str, path: Path) -> None:
        self._call(self.aload_adapter(name, path))

    def unload_adapter(self, name: str) -> None:
        self._call(self.aunload_adapter(name))

    def adapters(self) -> list[str]:
        """Adapters this backend has loaded (on every endpoint), oldest first."""
        return list(self._lifecycle.loaded)

    def health(self) -> bool:
        """True when at least one endpoint answers ``/health``; reloads lost adapters."""
        return self._call(self.ahealth())

    def reconcile(self) -> dict[str, list[str]]:
        """Reload adapters an endpoint lost (restart); returns endpoint -> reloaded names."""
        return self._call(self.areconcile())

    def endpoint_status(self) -> list[dict[str, Any]]:
        """Per endpoint: URL, breaker state and consecutive failures (for ``/status``)."""
        return [
            {"url": e.url, "breaker": e.breaker.state.name.lower(), "failures": e.breaker.failures}
            for e in self._pool.endpoints
        ]

    def close(self) -> None:
        """Stop the monitor, close connections and the loop thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._call(self._aclose(), timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._loop.is_running():
            self._loop.close()
        self._hooks.shutdown(wait=True)

    async def _aclose(self) -> None:
        await self._lifecycle.stop_monitor()
        await self._pool.aclose()

    def __enter__(self) -> VllmBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run ``coro`` on the backend's loop without waiting: the proxy's server runs
        there, so each of its requests reaches vLLM without a hop between threads."""
        if self._closed:
            coro.close()
            raise ServingError("the vLLM backend is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop thread and wait; its events are delivered by return."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("called the sync API from the backend's loop; await a*() instead")
        if self._closed and not coro.__qualname__.endswith("_aclose"):
            coro.close()
            raise ServingError("the vLLM backend is closed")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
        finally:
            # Events of this call reach the hook before we return; a call that ends after
            # close() has no hook thread left to wait on (and must not fail for that).
            if self._on_event is not None:
                with contextlib.suppress(RuntimeError):  # "cannot schedule ... after shutdown"
                    self._hooks.submit(_noop).result(timeout)

    # -- generation ----------------------------------------------------------------------

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        """All requests concurrently; vLLM batches them. Raises the first failure."""
        results = await asyncio.gather(
            *(self._generate_one(r) for r in requests), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return list(results)

    async def _generate_one(self, request: GenerationRequest) -> list[Completion]:
        adapter = request.adapter
        with self._lifecycle.in_flight(adapter):  # before the first await: unloads wait for us
            async with self._slots:
                model = adapter or await self.abase_model_name()
                chat = request.prompt.messages is not None
                started = time.perf_counter()
                data = await self._pool.post_with_retries(
                    "generate",
                    api_path(chat),
                    self._body(request, model, chat),
                    adapter=adapter,
                    hooks=self._lifecycle,
                )
                latency = time.perf_counter() - started
        return await self._completions(request, data, chat, latency)

    # -- relaying a client's own request (the proxy) --------------------------------------

    async def forward(
        self, path: str, body: dict[str, Any], *, adapter: str | None
    ) -> dict[str, Any]:
        """From any event loop: POST a client's OpenAI request as it is; vLLM's JSON.

        Counted in flight on ``adapter`` like a generation, so a swap drains it; raises
        ``AdapterNotLoadedError`` at once when ``adapter`` was retired (route again).
        """
        return await self._on_own_loop(self._forward(path, body, adapter))

    async def forward_stream(
        self, path: str, body: dict[str, Any], *, adapter: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        """From any event loop: a streaming request's chunks, as vLLM sent them.

        Closing the iterator early (a client gone, a loop stopped) closes the connection,
        and vLLM aborts the generation.
        """
        own = asyncio.get_running_loop() is self._loop
        relayed = self._stream(path, body, adapter)
        if not own:
            relayed = across_loops(relayed, self._loop)
        async with contextlib.aclosing(relayed) as chunks:
            async for chunk in chunks:
                yield chunk

    async def forward_base_model_name(self) -> str:
        """``abase_model_name`` from any event loop."""
        return await self._on_own_loop(self.abase_model_name())

    async def _forward(self, path: str, body: dict[str, Any], adapter: str | None) -> Any:
        with self._lifecycle.in_flight(adapter):
            async with self._slots:
                return await self._pool.post_with_retries(
                    "proxy", path, body, adapter=adapter, hooks=self._lifecycle
                )

    async def _stream(
        self, path: str, body: dict[str, Any], adapter: str | None
    ) -> AsyncIterator[dict[str, Any]]:
        with self._lifecycle.in_flight(adapter):
            async with self._slots:
                response = await self._pool.open_stream(
                    "proxy", path, body, adapter=adapter, hooks=self._lifecycle
                )
                try:
                    async for chunk in sse_chunks(response):
                        yield chunk
                finally:
                    await response.aclose()

    async def _on_own_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        if asyncio.get_running_loop() is self._loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    def _body(self, request: GenerationRequest, model: str, chat: bool) -> dict[str, Any]:
        return request_body(self.config, request, model, chat)

    async def _completions(
        self, request: GenerationRequest, data: dict[str, Any], chat: bool, latency: float
    ) -> list[Completion]:
        base = await self.abase_model_name()
        completions = parse_completions(request, data, chat=chat, base_name=base, latency=latency)
        for completion in completions:
            self._metrics.completions.labels(completion.finish_reason).inc()
        return completions

    async def abase_model_name(self) -> str:
        """vLLM's served name of the base model (the ``/v1/models`` entry without parent)."""
        return await self._pool.base_model_name()

    # -- adapters and restarts -----------------------------------------------------------

    async def aload_adapter(self, name: str, path: Path | str) -> None:
        """Load + probe ``name`` on every endpoint, or roll back everywhere and raise."""
        await self._lifecycle.load(name, str(path))

    async def aunload_adapter(self, name: str) -> None:
        """Drain in-flight requests on ``name`` (bounded), then unload it everywhere."""
        await self._lifecycle.unload(name)

    async def areconcile(self) -> dict[str, list[str]]:
        """Reload on each reachable endpoint the adapters it lost; see ``reconcile``."""
        return await self._lifecycle.reconcile_all()

    async def ahealth(self) -> bool:
        """Any endpoint healthy; healthy ones get their lost adapters reloaded."""
        return await self._lifecycle.health()

    # -- events --------------------------------------------------------------------------

    def _event(self, kind: str, **payload: Any) -> None:
        if self._on_event is not None:
            self._hooks.submit(self._deliver, self._on_event, kind, payload)

    @staticmethod
    def _deliver(hook: EventHook, kind: str, payload: dict[str, Any]) -> None:
        try:
            hook(kind, payload)
        except Exception:  # a broken hook (store down) must never break serving
            log.exception("on_event hook failed", extra={"event": kind})


def _noop() -> None:
    """A barrier: once it ran on the hook thread, every earlier event was delivered."""

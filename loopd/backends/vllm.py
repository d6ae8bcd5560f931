"""Serving through vLLM's OpenAI-compatible HTTP server, with LoRA hot-swap.

``VllmBackend`` satisfies ``ServingBackend`` with sync methods (the rest of loopd is
sync) over an async core: one ``httpx.AsyncClient`` on a private event-loop thread, so a
``generate`` of 64 prompts is 64 concurrent HTTP requests that vLLM batches itself. The
same operations are available as coroutines (``agenerate``, ``aload_adapter``, ...).

Adapter life cycle (vLLM's runtime LoRA API, ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``):

1. ``load_adapter(name, path)`` loads ``name`` on *every* endpoint, then probes each with
   a real one-token request; if any endpoint refuses or the probe fails, the adapter is
   unloaded from the endpoints that took it and a ``VllmAdapterError`` is raised, so
   whatever served before still serves everywhere.
2. The caller routes requests to ``name`` (``GenerationRequest(adapter=name)``).
3. ``unload_adapter(old)`` first waits until no request on ``old`` is in flight (and none
   started for ``drain_quiet_s``, which covers callers that read the old name just
   before the switch), bounded by ``drain_timeout_s``, then unloads it everywhere.

Why a new name per version instead of ``load_inplace``: vLLM may reuse prefix-cache
entries computed under the old weights after an in-place reload, and a response's
``model`` field then names the version that produced it (DESIGN.md, "vLLM runtime LoRA").

Resilience: transport errors, 5xx and 429 are retried with capped exponential backoff and
jitter; each endpoint has a circuit breaker. A 404 for an adapter we loaded, or an
adapter missing from ``/v1/models``, means the server restarted: the backend reloads every
adapter it has loaded (``reconcile``) and retries. A monitor task does the same every
``monitor_interval_s`` so a restart is noticed even while no traffic flows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from loopd.backends.vllm_errors import (
    AdapterAlreadyLoadedError,
    AdapterNotLoadedError,
    AdapterPathError,
    AdapterProbeError,
    AdapterRankError,
    AdapterRejectedError,
    AdapterUnavailableError,
    ServingError,
    ServingRequestError,
    ServingUnavailableError,
    VllmAdapterError,
    adapter_error,
    error_message,
    request_error,
    retryable,
)
from loopd.backends.vllm_resilience import Backoff, BreakerState, CircuitBreaker
from loopd.config.vllm import VllmConfig
from loopd.types import Completion, GenerationRequest

__all__ = [
    "AdapterAlreadyLoadedError",
    "AdapterNotLoadedError",
    "AdapterPathError",
    "AdapterProbeError",
    "AdapterRankError",
    "AdapterRejectedError",
    "AdapterUnavailableError",
    "ServingError",
    "ServingRequestError",
    "ServingUnavailableError",
    "VllmAdapterError",
    "VllmBackend",
    "VllmConfig",
    "adapter_error",
    "chosen_logprobs",
    "error_message",
    "request_error",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
EventHook = Callable[[str, dict[str, Any]], None]
_COMPLETION_FIELDS = {f.name for f in dataclasses.fields(Completion)}


# -- metrics -----------------------------------------------------------------------------


class _Metrics:
    """The backend's own counters, registered on the daemon's registry (or a private one)."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "loopd_vllm_requests",
            "HTTP calls to vLLM by operation and outcome.",
            ["endpoint", "operation", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "loopd_vllm_failures",
            "Failed vLLM calls by error kind.",
            ["endpoint", "operation", "error"],
            registry=registry,
        )
        self.retries = Counter(
            "loopd_vllm_retries", "Retries of vLLM calls.", ["operation"], registry=registry
        )
        self.breaker_state = Gauge(
            "loopd_vllm_breaker_state",
            "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open.",
            ["endpoint"],
            registry=registry,
        )
        self.breaker_opened = Counter(
            "loopd_vllm_breaker_opened",
            "Times an endpoint's breaker opened.",
            ["endpoint"],
            registry=registry,
        )
        self.adapter_ops = Counter(
            "loopd_vllm_adapter_operations",
            "Adapter loads, unloads, reloads and probes by outcome (error kind on failure).",
            ["operation", "outcome"],
            registry=registry,
        )
        self.load_seconds = Histogram(
            "loopd_vllm_adapter_load_seconds",
            "Time to load and probe an adapter on all endpoints.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.drain_seconds = Histogram(
            "loopd_vllm_adapter_drain_seconds",
            "Time an unload waited for in-flight requests on the old adapter.",
            buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.restarts = Counter(
            "loopd_vllm_restarts_detected",
            "Times an endpoint had lost adapters loopd loaded (a vLLM restart).",
            ["endpoint"],
            registry=registry,
        )
        self.inflight = Gauge(
            "loopd_vllm_inflight_requests", "Generation requests in flight.", registry=registry
        )
        self.completions = Counter(
            "loopd_vllm_completions",
            "Completions received by finish reason (vLLM's own 'repetition' included).",
            ["finish_reason"],
            registry=registry,
        )


# -- the backend -------------------------------------------------------------------------


@dataclasses.dataclass
class _Endpoint:
    url: str
    breaker: CircuitBreaker
    reconcile_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


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
        self._base_name = base_model_name or config.served_model_name
        self._on_event = on_event
        self._metrics = _Metrics(registry if registry is not None else CollectorRegistry())
        self._clock = clock
        self._rng = rng or random.Random()
        self._backoff = Backoff(
            config.backoff_initial_s,
            config.backoff_max_s,
            config.backoff_multiplier,
            config.backoff_jitter,
        )
        self._loaded: dict[str, str] = {}  # serving name -> path given to vLLM, in load order
        self._inflight: collections.Counter[str | None] = collections.Counter()
        self._last_start: dict[str | None, float] = {}
        self._pending_unload: dict[str, set[str]] = {}  # name -> endpoints that kept it
        self._next = 0
        self._closed = False
        # Hooks run on their own thread, in order: a slow store write must never stall the
        # event loop that every request goes through.
        self._hooks = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loopd-vllm-events")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="loopd-vllm", daemon=True
        )
        self._thread.start()
        self._call(self._setup(transport))

    async def _setup(self, transport: httpx.AsyncBaseTransport | None) -> None:
        """Client, locks and breakers are made on the loop thread that will use them."""
        limit = self.config.max_concurrent_requests
        key = self.config.api_key
        headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        self._client = httpx.AsyncClient(
            transport=transport,
            headers=headers,
            timeout=self._timeout(self.config.request_timeout_s),
            limits=httpx.Limits(max_connections=limit + 8, max_keepalive_connections=limit + 8),
        )
        self._slots = asyncio.Semaphore(limit)
        self._admin_lock = asyncio.Lock()
        self._endpoints = [self._endpoint(url) for url in self.config.endpoints]
        self._monitor: asyncio.Task[None] | None = None
        if self.config.monitor_interval_s > 0:
            self._monitor = asyncio.get_running_loop().create_task(self._monitor_loop())

    def _endpoint(self, url: str) -> _Endpoint:
        gauge = self._metrics.breaker_state.labels(url)
        gauge.set(BreakerState.CLOSED)

        def changed(old: BreakerState, new: BreakerState) -> None:
            gauge.set(new)
            if new is BreakerState.OPEN:
                self._metrics.breaker_opened.labels(url).inc()
            level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
            log.log(level, "vllm breaker %s", new.name.lower(), extra={"endpoint": url})
            self._event(f"serving_breaker_{new.name.lower()}", endpoint=url, previous=old.name)

        breaker = CircuitBreaker(
            threshold=self.config.breaker_failure_threshold,
            reset_s=self.config.breaker_reset_s,
            clock=self._clock,
            on_change=changed,
        )
        return _Endpoint(url, breaker)

    def _timeout(self, read_s: float) -> httpx.Timeout:
        return httpx.Timeout(read_s, connect=self.config.connect_timeout_s)

    # -- sync facade (ServingBackend) ----------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return self._call(self.agenerate(requests))

    def load_adapter(self, name: str, path: Path) -> None:
        self._call(self.aload_adapter(name, path))

    def unload_adapter(self, name: str) -> None:
        self._call(self.aunload_adapter(name))

    def adapters(self) -> list[str]:
        """Adapters this backend has loaded (on every endpoint), oldest first."""
        return list(self._loaded)

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
            for e in self._endpoints
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
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self._client.aclose()

    def __enter__(self) -> VllmBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("called the sync API from the backend's loop; await a*() instead")
        if self._closed and not coro.__qualname__.endswith("_aclose"):
            coro.close()
            raise ServingError("the vLLM backend is closed")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)
        finally:
            if self._on_event is not None:  # events of this call reach the hook before we return
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
        if adapter is not None and adapter not in self._loaded:
            raise AdapterNotLoadedError(
                f"adapter {adapter!r} is not loaded (loaded: {list(self._loaded)}); load it "
                "before routing requests to it",
            )
        # Counted before the first await: an unload that starts after this line waits for us.
        self._inflight[adapter] += 1
        self._last_start[adapter] = self._clock()
        self._metrics.inflight.inc()
        try:
            async with self._slots:
                model = adapter or await self.abase_model_name()
                chat = request.prompt.messages is not None
                path = "/v1/chat/completions" if chat else "/v1/completions"
                started = time.perf_counter()
                data = await self._post_with_retries(
                    "generate", path, self._body(request, model, chat), adapter=adapter
                )
                latency = time.perf_counter() - started
        finally:
            self._inflight[adapter] -= 1
            self._metrics.inflight.dec()
        return await self._completions(request, data, chat, latency)

    def _body(self, request: GenerationRequest, model: str, chat: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens,
            "n": request.n,
            "temperature": request.temperature,
            "top_p": request.top_p,
        }
        if request.seed is not None:
            body["seed"] = request.seed
        if request.repetition_penalty != 1.0:
            body["repetition_penalty"] = request.repetition_penalty
        if request.no_repeat_ngram_size:
            raise ValueError(
                "no_repeat_ngram_size: vLLM's OpenAI API has no such parameter; "
                "compare it on the local backend"
            )
        if self.config.return_token_ids:
            body["return_token_ids"] = True
        if chat:
            body["messages"] = [dict(m) for m in request.prompt.messages or ()]
            if self.config.logprobs is not None:
                body |= {"logprobs": True, "top_logprobs": self.config.logprobs}
        else:
            body["prompt"] = request.prompt.text or ""
            if self.config.logprobs is not None:
                body["logprobs"] = self.config.logprobs
        return body | self.config.extra_body

    async def _completions(
        self, request: GenerationRequest, data: dict[str, Any], chat: bool, latency: float
    ) -> list[Completion]:
        served = data.get("model")
        adapter = None if served == await self.abase_model_name() else served
        if adapter != request.adapter:
            log.warning(
                "vllm answered from another model",
                extra={"requested": request.adapter, "served": served},
            )
        choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
        completions = [
            self._completion(request, choice, chat, adapter, latency) for choice in choices
        ]
        for completion in completions:
            self._metrics.completions.labels(completion.finish_reason).inc()
        return completions

    def _completion(
        self,
        request: GenerationRequest,
        choice: dict[str, Any],
        chat: bool,
        adapter: str | None,
        latency: float,
    ) -> Completion:
        text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
        text = text or ""
        token_ids = choice.get("token_ids")
        fields: dict[str, Any] = {
            "prompt_id": request.prompt.id,
            "text": text,  # as served: prompt + text must re-tokenize to the served ids
            "finish_reason": choice.get("finish_reason") or "unknown",
            "token_ids": tuple(token_ids) if token_ids is not None else None,
            "stop_reason": choice.get("stop_reason"),
            "adapter": adapter,
            "temperature": request.temperature,
            "seed": request.seed,
            "latency_s": latency,
        }
        if "token_logprobs" in _COMPLETION_FIELDS:  # proposed field; see the backend report
            fields["token_logprobs"] = chosen_logprobs(choice.get("logprobs"), chat=chat)
        return Completion(**fields)

    # -- HTTP with retries and breakers -----------------------------------------------------

    def _pick(self, exclude: set[str]) -> _Endpoint | None:
        """Round-robin over endpoints whose breaker admits a call, avoiding ``exclude``."""
        count = len(self._endpoints)
        for preferred in (True, False):
            for offset in range(count):
                endpoint = self._endpoints[(self._next + offset) % count]
                if preferred and endpoint.url in exclude:
                    continue
                if endpoint.breaker.allow():
                    self._next = (self._next + offset + 1) % count
                    return endpoint
        return None

    async def _post_with_retries(
        self, operation: str, path: str, body: dict[str, Any], *, adapter: str | None
    ) -> dict[str, Any]:
        """POST to some endpoint, retrying elsewhere/later on server trouble.

        Steps per attempt: (1) pick an endpoint whose breaker admits a call; (2) POST;
        (3) 200 -> done; 404 on an adapter we loaded -> that server restarted, reload
        and retry; other 4xx -> raise at once; transport error / 5xx / 429 -> count a
        breaker failure, back off, retry.
        """
        last: ServingError = ServingUnavailableError("no vLLM endpoint admitted the request")
        tried: set[str] = set()
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._metrics.retries.labels(operation).inc()
                await asyncio.sleep(self._retry_delay(attempt - 1))
            endpoint = self._pick(tried)
            if endpoint is None:
                last = ServingUnavailableError(
                    "every vLLM endpoint's circuit breaker is open (recent failures); "
                    f"endpoints: {[e.url for e in self._endpoints]}"
                )
                continue
            tried.add(endpoint.url)
            outcome = await self._attempt(endpoint, operation, path, body, adapter)
            if isinstance(outcome, dict):
                return outcome
            if not isinstance(outcome, _Retry):
                raise outcome
            last = outcome.error
        self._metrics.failures.labels("all", operation, last.kind).inc()
        raise ServingUnavailableError(
            f"{operation} failed after {self.config.max_retries + 1} attempts: {last}",
            endpoint=last.endpoint,
            status=last.status,
        ) from last

    def _retry_delay(self, attempt: int) -> float:
        delay = self._backoff.delay(attempt, self._rng)
        waits = [e.breaker.retry_in() for e in self._endpoints]
        return max(delay, min(waits)) if waits else delay

    async def _attempt(
        self,
        endpoint: _Endpoint,
        operation: str,
        path: str,
        body: dict[str, Any],
        adapter: str | None,
    ) -> dict[str, Any] | ServingError | _Retry:
        url = endpoint.url
        try:
            response = await self._client.post(url + path, json=body)
        except httpx.TransportError as error:
            endpoint.breaker.record_failure()
            return self._failed(
                url,
                operation,
                ServingUnavailableError(
                    f"vLLM on {url} unreachable: {type(error).__name__}: {error}", endpoint=url
                ),
                retry=True,
            )
        except BaseException:
            endpoint.breaker.release()
            raise
        status = response.status_code
        if status == 200:
            endpoint.breaker.record_success()
            self._metrics.requests.labels(url, operation, "ok").inc()
            return response.json()
        message = error_message(response)
        if retryable(status):
            endpoint.breaker.record_failure()
            error = ServingUnavailableError(
                f"vLLM on {url} answered {status}: {message}", endpoint=url, status=status
            )
            return self._failed(url, operation, error, retry=True)
        endpoint.breaker.record_success()  # it answered: the server is up
        error = request_error(status, message, model=body.get("model", "?"), endpoint=url)
        if status == 404 and adapter is not None and adapter in self._loaded:
            await self._reconcile_quietly(endpoint)
            return self._failed(url, operation, error, retry=True)
        return self._failed(url, operation, error, retry=False)

    def _failed(
        self, url: str, operation: str, error: ServingError, *, retry: bool
    ) -> ServingError | _Retry:
        self._metrics.requests.labels(url, operation, "error").inc()
        self._metrics.failures.labels(url, operation, error.kind).inc()
        log.warning(
            "vllm call failed",
            extra={"endpoint": url, "operation": operation, "error": str(error), "retry": retry},
        )
        return _Retry(error) if retry else error

    async def _get_json(self, endpoint: _Endpoint, path: str) -> Any:
        response = await self._client.get(
            endpoint.url + path, timeout=self._timeout(self.config.admin_timeout_s)
        )
        response.raise_for_status()
        return response.json()

    async def _served_models(self, endpoint: _Endpoint) -> dict[str, dict[str, Any]]:
        data = await self._get_json(endpoint, "/v1/models")
        return {card["id"]: card for card in data.get("data", [])}

    async def abase_model_name(self) -> str:
        """vLLM's served name of the base model (the ``/v1/models`` entry without parent)."""
        if self._base_name is None:
            errors = []
            for endpoint in self._endpoints:
                try:
                    cards = await self._served_models(endpoint)
                except httpx.HTTPError as error:
                    errors.append(f"{endpoint.url}: {error}")
                    continue
                bases = [name for name, card in cards.items() if not card.get("parent")]
                if bases:
                    self._base_name = bases[0]
                    break
            else:
                raise ServingUnavailableError(
                    f"cannot learn the base model name from /v1/models: {errors}; set "
                    "base_model_name or start vLLM"
                )
        return self._base_name

    # -- adapters ------------------------------------------------------------------------

    async def aload_adapter(self, name: str, path: Path | str) -> None:
        """Load + probe ``name`` on every endpoint, or roll back everywhere and raise."""
        path = str(path)
        async with self._admin_lock:
            if name in self._loaded:
                error = AdapterAlreadyLoadedError(
                    f"adapter {name!r} is already loaded by loopd; use a new name per version",
                    adapter=name,
                )
                self._load_failed(name, path, error, rolled_back=[])
                raise error
            started = time.perf_counter()
            results = await asyncio.gather(
                *(self._load_and_probe(e, name, path) for e in self._endpoints),
                return_exceptions=True,
            )
            took = [e for e, r in zip(self._endpoints, results, strict=True) if r is None]
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                await asyncio.gather(*(self._unload_on(e, name) for e in took))
                error = errors[0]
                if not isinstance(error, VllmAdapterError):
                    error = AdapterUnavailableError(
                        f"loading adapter {name!r} failed: {error}", adapter=name
                    )
                self._load_failed(name, path, error, rolled_back=[e.url for e in took])
                raise error
            self._loaded[name] = path
            seconds = time.perf_counter() - started
        self._metrics.load_seconds.observe(seconds)
        self._metrics.adapter_ops.labels("load", "ok").inc()
        log.info("adapter loaded", extra={"adapter": name, "path": path, "seconds": seconds})
        self._event(
            "adapter_loaded",
            adapter=name,
            path=path,
            seconds=round(seconds, 4),
            endpoints=[e.url for e in self._endpoints],
        )

    def _load_failed(
        self, name: str, path: str, error: VllmAdapterError, *, rolled_back: list[str]
    ) -> None:
        self._metrics.adapter_ops.labels("load", error.kind).inc()
        log.warning(
            "adapter load failed",
            extra={"adapter": name, "path": path, "error": str(error), "kind": error.kind},
        )
        self._event(
            "adapter_load_failed",
            adapter=name,
            path=path,
            error=error.kind,
            message=str(error),
            endpoint=error.endpoint,
            rolled_back_on=rolled_back,
        )

    async def _load_and_probe(self, endpoint: _Endpoint, name: str, path: str) -> None:
        await self._load_on(endpoint, name, path)
        try:
            await self._probe(endpoint, name)
        except BaseException:
            await self._unload_on(endpoint, name)
            raise

    async def _load_on(self, endpoint: _Endpoint, name: str, path: str) -> None:
        """One endpoint's load, retried on server trouble; adopts an identical leftover."""
        body = {"lora_name": name, "lora_path": path}
        last: Exception | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._metrics.retries.labels("load").inc()
                await asyncio.sleep(self._backoff.delay(attempt - 1, self._rng))
            try:
                response = await self._client.post(
                    endpoint.url + "/v1/load_lora_adapter",
                    json=body,
                    timeout=self._timeout(self.config.admin_timeout_s),
                )
            except httpx.TransportError as error:
                endpoint.breaker.record_failure()
                last = error
                continue
            status, message = response.status_code, error_message(response)
            if status == 200:
                endpoint.breaker.record_success()
                return
            error = adapter_error(status, message, adapter=name, path=path, endpoint=endpoint.url)
            if isinstance(error, AdapterAlreadyLoadedError) and await self._serves_from(
                endpoint, name, path
            ):
                log.info("adopted adapter already on server", extra={"adapter": name})
                return
            if retryable(status) and not isinstance(error, AdapterRankError):
                endpoint.breaker.record_failure()
                last = error
                continue
            endpoint.breaker.record_success()
            raise error
        if isinstance(last, VllmAdapterError):
            raise last
        raise AdapterUnavailableError(
            f"vLLM on {endpoint.url} unreachable while loading {name!r}: "
            f"{type(last).__name__}: {last}",
            adapter=name,
            endpoint=endpoint.url,
        )

    async def _serves_from(self, endpoint: _Endpoint, name: str, path: str) -> bool:
        """Is ``name`` on the server from the same folder (a leftover we may adopt)?"""
        try:
            card = (await self._served_models(endpoint)).get(name)
        except httpx.HTTPError:
            return False
        return card is not None and str(card.get("root", "")).rstrip("/") == path.rstrip("/")

    async def _probe(self, endpoint: _Endpoint, name: str) -> None:
        body = {
            "model": name,
            "prompt": self.config.probe_prompt,
            "max_tokens": 1,
            "temperature": 0.0,
        }
        try:
            response = await self._client.post(
                endpoint.url + "/v1/completions",
                json=body,
                timeout=self._timeout(self.config.admin_timeout_s),
            )
        except httpx.TransportError as error:
            raise AdapterProbeError(
                f"probe of {name!r} on {endpoint.url} failed: {type(error).__name__}: {error}",
                adapter=name,
                endpoint=endpoint.url,
            ) from error
        if response.status_code != 200:
            raise AdapterProbeError(
                f"probe of {name!r} on {endpoint.url} answered {response.status_code}: "
                f"{error_message(response)}",
                adapter=name,
                endpoint=endpoint.url,
                status=response.status_code,
            )
        self._metrics.adapter_ops.labels("probe", "ok").inc()

    async def _unload_on(self, endpoint: _Endpoint, name: str) -> bool:
        """Best effort; True when gone (a 404 means already gone, e.g. after a restart)."""
        try:
            response = await self._client.post(
                endpoint.url + "/v1/unload_lora_adapter",
                json={"lora_name": name},
                timeout=self._timeout(self.config.admin_timeout_s),
            )
        except httpx.TransportError as error:
            log.warning(
                "unload failed",
                extra={"adapter": name, "endpoint": endpoint.url, "error": str(error)},
            )
            return False
        if response.status_code in (200, 404):
            return True
        log.warning(
            "unload refused",
            extra={"adapter": name, "endpoint": endpoint.url, "error": error_message(response)},
        )
        return False

    async def aunload_adapter(self, name: str) -> None:
        """Drain in-flight requests on ``name`` (bounded), then unload it everywhere."""
        if name not in self._loaded:
            raise AdapterNotLoadedError(f"adapter {name!r} is not loaded by loopd")
        started = self._clock()
        drained = await self._drain(name)
        waited = self._clock() - started
        self._metrics.drain_seconds.observe(waited)
        async with self._admin_lock:
            if self._loaded.pop(name, None) is None:
                return  # a concurrent unload finished first
            gone = await asyncio.gather(*(self._unload_on(e, name) for e in self._endpoints))
        kept = {e.url for e, ok in zip(self._endpoints, gone, strict=True) if not ok}
        if kept:
            self._pending_unload[name] = kept
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
        self._event(
            "adapter_unloaded",
            adapter=name,
            drained=drained,
            drain_seconds=round(waited, 4),
            inflight_left=self._inflight[name],
            pending_on=sorted(kept),
        )

    async def _drain(self, name: str) -> bool:
        """Wait until nothing is in flight on ``name`` and nothing started for a while."""
        deadline = self._clock() + self.config.drain_timeout_s
        while True:
            quiet = self._clock() - self._last_start.get(name, float("-inf"))
            if self._inflight[name] == 0 and quiet >= self.config.drain_quiet_s:
                return True
            if self._clock() >= deadline:
                log.warning(
                    "drain timed out", extra={"adapter": name, "inflight": self._inflight[name]}
                )
                return False
            await asyncio.sleep(0.02)

    # -- restarts ------------------------------------------------------------------------

    async def areconcile(self) -> dict[str, list[str]]:
        """Reload on each reachable endpoint the adapters it lost; see ``reconcile``."""
        results = {}
        for endpoint in self._endpoints:
            with contextlib.suppress(httpx.HTTPError, VllmAdapterError):
                results[endpoint.url] = await self._reconcile(endpoint)
        return results

    async def _reconcile_quietly(self, endpoint: _Endpoint) -> None:
        try:
            await self._reconcile(endpoint)
        except (httpx.HTTPError, VllmAdapterError) as error:
            log.warning("reconcile failed", extra={"endpoint": endpoint.url, "error": str(error)})

    async def _reconcile(self, endpoint: _Endpoint) -> list[str]:
        """Steps: (1) list served models; (2) reload what we loaded and it lacks (a
        restart); (3) finish unloads that failed while it was away.

        Holds the admin lock too, so a reload can never race an unload of the same name
        (which would leave an orphan on the server) or a load of a new one.
        """
        async with endpoint.reconcile_lock, self._admin_lock:
            served = await self._served_models(endpoint)
            missing = [n for n in list(self._loaded) if n not in served]
            if missing:
                self._metrics.restarts.labels(endpoint.url).inc()
                log.warning(
                    "vllm lost adapters (restart?)",
                    extra={"endpoint": endpoint.url, "missing": missing},
                )
                self._event("serving_restart_detected", endpoint=endpoint.url, missing=missing)
            failures: list[VllmAdapterError] = []
            for name in missing:
                path = self._loaded[name]
                try:
                    await self._load_and_probe(endpoint, name, path)
                except VllmAdapterError as error:
                    failures.append(error)
                    self._metrics.adapter_ops.labels("reload", error.kind).inc()
                    self._event(
                        "adapter_reload_failed",
                        adapter=name,
                        endpoint=endpoint.url,
                        error=error.kind,
                        message=str(error),
                    )
                    continue
                self._metrics.adapter_ops.labels("reload", "ok").inc()
                self._event("adapter_reloaded", adapter=name, endpoint=endpoint.url, path=path)
            for name, urls in list(self._pending_unload.items()):
                if endpoint.url in urls and (
                    name not in served or await self._unload_on(endpoint, name)
                ):
                    urls.discard(endpoint.url)
                    if not urls:
                        del self._pending_unload[name]
            if failures:
                raise failures[0]
            return missing

    async def ahealth(self) -> bool:
        """Any endpoint healthy; healthy ones get their lost adapters reloaded."""
        healthy = await asyncio.gather(*(self._check(e) for e in self._endpoints))
        return any(healthy)

    async def _check(self, endpoint: _Endpoint) -> bool:
        try:
            response = await self._client.get(
                endpoint.url + "/health", timeout=self._timeout(self.config.admin_timeout_s)
            )
        except httpx.TransportError:
            endpoint.breaker.record_failure()
            return False
        if response.status_code != 200:
            endpoint.breaker.record_failure()
            return False
        endpoint.breaker.record_success()
        await self._reconcile_quietly(endpoint)
        return True

    async def _monitor_loop(self) -> None:
        """Notice restarts (and recoveries) while no traffic flows."""
        while True:
            await asyncio.sleep(self.config.monitor_interval_s)
            try:
                await self.ahealth()
            except Exception:  # never let the monitor die; count it and go on
                log.exception("vllm monitor iteration failed")

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


@dataclasses.dataclass(frozen=True)
class _Retry:
    """An attempt failed in a way another attempt may fix."""

    error: ServingError


def chosen_logprobs(logprobs: dict[str, Any] | None, *, chat: bool) -> tuple[float, ...] | None:
    """The sampled token's logprob per position, from either API's logprobs shape."""
    if not logprobs:
        return None
    if chat:
        return tuple(float(item["logprob"]) for item in logprobs.get("content") or ())
    values = logprobs.get("token_logprobs")
    return None if values is None else tuple(float(v) for v in values)

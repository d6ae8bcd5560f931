"""The HTTP side of the vLLM backend: one shared client, a breaker per endpoint, retries.

``EndpointPool`` knows the network and nothing about adapters: which endpoint takes the
next call (round robin over those whose breaker admits one), which failures deserve
another attempt, and how long to wait first. The one place adapters matter, a 404 for an
adapter loopd loaded (that server restarted and lost it), is handed to the caller's
``AdapterHooks``, so this module never imports the adapter life cycle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream

from loopd.backends.vllm.errors import (
    ServingError,
    ServingUnavailableError,
    error_message,
    request_error,
    retryable,
)
from loopd.backends.vllm.metrics import VllmMetrics
from loopd.backends.vllm.resilience import Backoff, BreakerState, CircuitBreaker
from loopd.config.vllm import VllmConfig

log = logging.getLogger("loopd.backends.vllm")
T = TypeVar("T")


class Emit(Protocol):
    """Where the pool and the life cycle report events (the backend's ``on_event``)."""

    def __call__(self, kind: str, /, **payload: Any) -> None: ...


class AdapterHooks(Protocol):
    """What a retried request needs to know about adapters (the life cycle provides it)."""

    def is_loaded(self, name: str) -> bool:
        """Did loopd load ``name``, so that a 404 for it means the server lost it?"""
        ...

    async def on_adapter_missing(self, endpoint: Endpoint) -> None:
        """``endpoint`` lost an adapter loopd loaded: put it back; never raises."""
        ...


@dataclasses.dataclass
class Endpoint:
    """One vLLM server; ``reconcile_lock`` keeps its restart reloads one at a time."""

    url: str
    breaker: CircuitBreaker
    reconcile_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


class _AbortingStream(AiohttpResponseStream):
    """A body closed before its end drops its connection.

    httpx-aiohttp 0.2 closes a response by waiting for the rest of the body, so vLLM
    never hears that the client left and generates to ``max_tokens``; a loop stopped in
    the proxy then saves nothing upstream (``test_a_looping_stream_is_stopped_upstream``).
    A finished body keeps its connection for the next request.
    """

    async def aclose(self) -> None:
        if not self._aiohttp_response.content.at_eof():
            self._aiohttp_response.close()
        await super().aclose()


class PooledTransport(AiohttpTransport):
    """httpx's API over aiohttp's connection pool: httpcore 1.0.9's pool walks every
    connection on each request, 42% of the proxy's CPU at 32 clients (bench/proxy.py)."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        stream = response.stream
        assert isinstance(stream, AiohttpResponseStream)
        response.stream = _AbortingStream(stream._aiohttp_response)
        return response


@dataclasses.dataclass(frozen=True)
class _Retry:
    """An attempt failed in a way another attempt may fix."""

    error: ServingError


class EndpointPool:
    """The endpoints of ``config`` behind one ``httpx.AsyncClient``.

    Make it on the event loop that will use it: the client and the locks belong to it.
    """

    def __init__(
        self,
        config: VllmConfig,
        metrics: VllmMetrics,
        emit: Emit,
        *,
        clock: Callable[[], float],
        rng: random.Random,
        transport: httpx.AsyncBaseTransport | None = None,
        base_model_name: str | None = None,
    ):
        self.config = config
        self.base_name = base_model_name
        self._metrics = metrics
        self._emit = emit
        self._clock = clock
        self._rng = rng
        self._backoff = Backoff(
            config.backoff_initial_s,
            config.backoff_max_s,
            config.backoff_multiplier,
            config.backoff_jitter,
        )
        self._next = 0
        self.client = self._client(transport)
        self.endpoints = [self._endpoint(url) for url in config.endpoints]

    def _client(self, transport: httpx.AsyncBaseTransport | None) -> httpx.AsyncClient:
        limit = self.config.max_concurrent_requests
        key = self.config.api_key
        headers = {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}
        limits = httpx.Limits(max_connections=limit + 8, max_keepalive_connections=limit + 8)
        return httpx.AsyncClient(
            transport=transport or PooledTransport(limits=limits),
            headers=headers,
            timeout=self._timeout(self.config.request_timeout_s),
            limits=limits,
        )

    def _endpoint(self, url: str) -> Endpoint:
        gauge = self._metrics.breaker_state.labels(url)
        gauge.set(BreakerState.CLOSED)

        def changed(old: BreakerState, new: BreakerState) -> None:
            gauge.set(new)
            if new is BreakerState.OPEN:
                self._metrics.breaker_opened.labels(url).inc()
            level = logging.WARNING if new is BreakerState.OPEN else logging.INFO
            log.log(level, "vllm breaker %s", new.name.lower(), extra={"endpoint": url})
            self._emit(f"serving_breaker_{new.name.lower()}", endpoint=url, previous=old.name)

        breaker = CircuitBreaker(
            threshold=self.config.breaker_failure_threshold,
            reset_s=self.config.breaker_reset_s,
            clock=self._clock,
            on_change=changed,
        )
        return Endpoint(url, breaker)

    def _timeout(self, read_s: float) -> httpx.Timeout:
        return httpx.Timeout(read_s, connect=self.config.connect_timeout_s)

    async def aclose(self) -> None:
        await self.client.aclose()

    def backoff_delay(self, attempt: int) -> float:
        """The jittered wait before retry ``attempt`` (0-based) of any call."""
        return self._backoff.delay(attempt, self._rng)

    # -- generation requests: any endpoint, retried ------------------------------------------

    async def post_with_retries(
        self,
        operation: str,
        path: str,
        body: dict[str, Any],
        *,
        adapter: str | None,
        hooks: AdapterHooks | None = None,
    ) -> dict[str, Any]:
        """POST to some endpoint, retrying elsewhere/later on server trouble; the JSON."""

        async def attempt(endpoint: Endpoint) -> dict[str, Any] | ServingError | _Retry:
            response = await self._send(endpoint, operation, path, body, stream=False)
            if not isinstance(response, httpx.Response):
                return response
            if response.status_code == 200:
                return response.json()
            return await self._refused(endpoint, operation, response, body, adapter, hooks)

        return await self._retrying(operation, attempt)

    async def open_stream(
        self,
        operation: str,
        path: str,
        body: dict[str, Any],
        *,
        adapter: str | None,
        hooks: AdapterHooks | None = None,
    ) -> httpx.Response:
        """POST a streaming request, retried like any other until vLLM answers 200; the
        open response (the caller reads and closes it). Nothing is retried once the
        stream has begun: its first bytes may be on their way to a client."""

        async def attempt(endpoint: Endpoint) -> httpx.Response | ServingError | _Retry:
            response = await self._send(endpoint, operation, path, body, stream=True)
            if not isinstance(response, httpx.Response) or response.status_code == 200:
                return response
            await response.aread()
            await response.aclose()
            return await self._refused(endpoint, operation, response, body, adapter, hooks)

        return await self._retrying(operation, attempt)

    async def _retrying(
        self, operation: str, attempt: Callable[[Endpoint], Awaitable[T | ServingError | _Retry]]
    ) -> T:
        """Steps per attempt: (1) pick an endpoint whose breaker admits a call; (2)
        ``attempt`` it: a result is done, a ``ServingError`` is raised at once (4xx), a
        ``_Retry`` (transport error, 5xx, 429, an adapter lost in a restart) backs off and
        tries again, elsewhere if it can."""
        last: ServingError = ServingUnavailableError("no vLLM endpoint admitted the request")
        tried: set[str] = set()
        for number in range(self.config.max_retries + 1):
            if number:
                self._metrics.retries.labels(operation).inc()
                await asyncio.sleep(self._retry_delay(number - 1))
            endpoint = self._pick(tried)
            if endpoint is None:
                last = ServingUnavailableError(
                    "every vLLM endpoint's circuit breaker is open (recent failures); "
                    f"endpoints: {[e.url for e in self.endpoints]}"
                )
                continue
            tried.add(endpoint.url)
            outcome = await attempt(endpoint)
            if isinstance(outcome, ServingError):
                raise outcome
            if not isinstance(outcome, _Retry):
                return outcome
            last = outcome.error
        self._metrics.failures.labels("all", operation, last.kind).inc()
        raise ServingUnavailableError(
            f"{operation} failed after {self.config.max_retries + 1} attempts: {last}",
            endpoint=last.endpoint,
            status=last.status,
        ) from last

    def _pick(self, exclude: set[str]) -> Endpoint | None:
        """Round-robin over endpoints whose breaker admits a call, avoiding ``exclude``."""
        count = len(self.endpoints)
        for preferred in (True, False):
            for offset in range(count):
                endpoint = self.endpoints[(self._next + offset) % count]
                if preferred and endpoint.url in exclude:
                    continue
                if endpoint.breaker.allow():
                    self._next = (self._next + offset + 1) % count
                    return endpoint
        return None

    def _retry_delay(self, attempt: int) -> float:
        """The backoff, but no sooner than the first breaker would admit a trial."""
        delay = self.backoff_delay(attempt)
        waits = [e.breaker.retry_in() for e in self.endpoints]
        return max(delay, min(waits)) if waits else delay

    async def _send(
        self, endpoint: Endpoint, operation: str, path: str, body: dict[str, Any], *, stream: bool
    ) -> httpx.Response | _Retry:
        """One POST; a 200 counts as a success here, anything else is the caller's to read."""
        url = endpoint.url
        try:
            request = self.client.build_request("POST", url + path, json=body)
            response = await self.client.send(request, stream=stream)
        except httpx.TransportError as error:
            endpoint.breaker.record_failure()
            error = ServingUnavailableError(
                f"vLLM on {url} unreachable: {type(error).__name__}: {error}", endpoint=url
            )
            return self._failed(url, operation, error, retry=True)
        except BaseException:
            endpoint.breaker.release()
            raise
        if response.status_code == 200:
            endpoint.breaker.record_success()
            self._metrics.requests.labels(url, operation, "ok").inc()
        return response

    async def _refused(
        self,
        endpoint: Endpoint,
        operation: str,
        response: httpx.Response,
        body: dict[str, Any],
        adapter: str | None,
        hooks: AdapterHooks | None,
    ) -> ServingError | _Retry:
        """A non-200 answer: retry on server trouble or a lost adapter, else give up."""
        url, status = endpoint.url, response.status_code
        message = error_message(response)
        if retryable(status):
            endpoint.breaker.record_failure()
            error = ServingUnavailableError(
                f"vLLM on {url} answered {status}: {message}", endpoint=url, status=status
            )
            return self._failed(url, operation, error, retry=True)
        endpoint.breaker.record_success()  # it answered: the server is up
        error = request_error(status, message, model=body.get("model", "?"), endpoint=url)
        if status == 404 and adapter is not None and hooks is not None and hooks.is_loaded(adapter):
            await hooks.on_adapter_missing(endpoint)  # that server restarted and lost it
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

    # -- admin calls: one endpoint, no retries -----------------------------------------------

    async def admin_post(
        self, endpoint: Endpoint, path: str, body: dict[str, Any]
    ) -> httpx.Response:
        """POST to ``endpoint`` under the admin timeout; the caller reads the answer."""
        return await self.client.post(
            endpoint.url + path, json=body, timeout=self._timeout(self.config.admin_timeout_s)
        )

    async def admin_get(self, endpoint: Endpoint, path: str) -> httpx.Response:
        """GET from ``endpoint`` under the admin timeout; the caller reads the answer."""
        return await self.client.get(
            endpoint.url + path, timeout=self._timeout(self.config.admin_timeout_s)
        )

    async def get_json(self, endpoint: Endpoint, path: str) -> Any:
        response = await self.admin_get(endpoint, path)
        response.raise_for_status()
        return response.json()

    async def served_models(self, endpoint: Endpoint) -> dict[str, dict[str, Any]]:
        """``/v1/models`` of ``endpoint``: served name -> model card."""
        data = await self.get_json(endpoint, "/v1/models")
        return {card["id"]: card for card in data.get("data", [])}

    async def base_model_name(self) -> str:
        """vLLM's served name of the base model (the ``/v1/models`` entry without parent)."""
        if self.base_name is None:
            errors = []
            for endpoint in self.endpoints:
                try:
                    cards = await self.served_models(endpoint)
                except httpx.HTTPError as error:
                    errors.append(f"{endpoint.url}: {error}")
                    continue
                bases = [name for name, card in cards.items() if not card.get("parent")]
                if bases:
                    self.base_name = bases[0]
                    break
            else:
                raise ServingUnavailableError(
                    f"cannot learn the base model name from /v1/models: {errors}; set "
                    "base_model_name or start vLLM"
                )
        return self.base_name

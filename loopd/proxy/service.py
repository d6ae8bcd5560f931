"""The proxy's endpoints: OpenAI's ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions``, in front of the serving backend.

Per request: (1) the API key (``proxy.api_keys``; 401 without a valid one); (2) the body,
at most ``proxy.max_request_bytes`` (413); (3) validation (400 naming the field); (4)
routing of the client's model name to the live adapter (404 for a model not served);
(5) the upstream call, routed again if that adapter was retired meanwhile; (6) the answer,
relayed; (7) each choice offered to the recorder. A refused request stores nothing.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from loopd.config import DetectorConfig, ProxyConfig
from loopd.proxy.calls import ProxyCall, ProxyError, Route, parse_call
from loopd.proxy.ingest import idempotency_key, parse_batch
from loopd.proxy.metrics import ProxyMetrics
from loopd.proxy.recorder import SampleRecorder
from loopd.proxy.redact import Redactor
from loopd.proxy.routing import ModelRouter, UnknownModel
from loopd.proxy.stream import DONE, WatchedStream
from loopd.proxy.upstream import AdapterRetired, Upstream
from loopd.store import Store
from loopd.types import Completion, Detection, Prompt

log = logging.getLogger(__name__)
ROUTE_ATTEMPTS = 3  # a request routed again at most this often, after a retirement each


class ProxyService:
    def __init__(
        self,
        cfg: ProxyConfig,
        *,
        router: ModelRouter,
        upstream: Upstream,
        recorder: SampleRecorder | None,
        detector: DetectorConfig,
        metrics: ProxyMetrics,
        store: Store,
        detect: Callable[[Completion], Detection],
        redactor: Redactor,
    ):
        self.cfg = cfg
        self.router = router
        self.upstream = upstream
        self.recorder = recorder
        self.detector = detector
        self.metrics = metrics
        self.store = store
        self.detect = detect
        self.redactor = redactor
        self._keys = [k.get_secret_value().encode() for k in cfg.api_keys]

    def reconfigure(self, cfg: ProxyConfig, detector: DetectorConfig) -> None:
        """New keys, limits and loop stopping for every later request (a config reload)."""
        self.cfg, self.detector = cfg, detector
        self._keys = [k.get_secret_value().encode() for k in cfg.api_keys]

    # -- endpoints -------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        async def answer() -> Response:
            live = self.router.live()
            card = {"id": self.router.public_name, "object": "model", "created": 0,
                    "owned_by": "loopd", "root": live or await self.upstream.base_model_name(),
                    "parent": None}  # fmt: skip
            return JSONResponse({"object": "list", "data": [card]})

        return await self._answer("models", request, answer)

    async def completions(self, request: Request) -> Response:
        return await self._generate("completions", request)

    async def chat(self, request: Request) -> Response:
        return await self._generate("chat", request)

    async def ingest(self, request: Request) -> Response:
        """Store a batch a service got from vLLM directly; 200 once it is in the database."""

        async def answer() -> Response:
            key = idempotency_key(request.headers)
            limit = self.cfg.max_ingest_samples
            rows = parse_batch(await self.read_body(request), max_samples=limit)
            ids, replayed, loops = await asyncio.to_thread(self._store_batch, key, rows)
            if not replayed:
                self.metrics.ingested.inc(len(ids))
            body = {"stored": 0 if replayed else len(ids), "ids": ids, "replayed": replayed,
                    "degenerate": loops}  # fmt: skip
            return JSONResponse(body)

        return await self._answer("ingest", request, answer)

    def _store_batch(
        self, key: str | None, rows: list[tuple[Prompt, Completion]]
    ) -> tuple[list[int], bool, int]:
        redacted = [self.redactor.sample(prompt, c) for prompt, c in rows]
        detected = [(prompt, c, self.detect(c)) for prompt, c in redacted]
        ids, replayed = self.store.add_ingested(key, detected)
        return ids, replayed, sum(d.degenerate for _, _, d in detected)

    # -- steps -----------------------------------------------------------------------

    async def _generate(self, route: Route, request: Request) -> Response:
        async def answer() -> Response:
            call = parse_call(route, await self.read_body(request))
            if call.stream:
                return await self._stream(call)
            data, adapter = await self._complete(call)
            self._record(call, _choices_of(call, data), adapter)
            return JSONResponse(data)

        return await self._answer(route, request, answer)

    async def _answer(
        self, route: str, request: Request, answer: Callable[[], Awaitable[Response]]
    ) -> Response:
        """Authorize, answer, turn errors into OpenAI's shape, count."""
        started = time.perf_counter()
        try:
            self.authorize(request)
            response = await answer()
        except ProxyError as error:
            response = JSONResponse(error.body(), status_code=error.status)
        except Exception:  # a bug or an upstream surprise: a 500 in OpenAI's shape, logged
            log.exception("proxy request failed", extra={"route": route})
            error = ProxyError("internal error in loopd's proxy; see its log", status=500)
            response = JSONResponse(error.body(), status_code=500)
        self.metrics.requests.labels(route, str(response.status_code)).inc()
        self.metrics.latency.labels(route).observe(time.perf_counter() - started)
        return response

    def authorize(self, request: Request) -> None:
        if not self._keys:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        given = key.strip().encode()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given, k) for k in self._keys):
            raise ProxyError("a valid API key is required: Authorization: Bearer <key>", status=401)

    async def read_body(self, request: Request) -> bytes:
        """The body, refused past ``max_request_bytes`` without reading the rest."""
        limit = self.cfg.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise _too_large(limit)
        return bytes(body)

    async def _routed(
        self, call: ProxyCall, attempt: Callable[[str | None], Awaitable[Any]]
    ) -> tuple[Any, str | None]:
        """``attempt(adapter)`` on the live adapter, routed again after a retirement."""
        for tries in range(ROUTE_ATTEMPTS):
            try:
                adapter = self.router.resolve(call.body["model"], fresh=tries > 0)
            except UnknownModel as error:
                raise ProxyError(str(error), param="model", status=404) from None
            try:
                return await attempt(adapter), adapter
            except AdapterRetired:
                self.metrics.rerouted.inc()
        raise ProxyError("the live adapter changed under every attempt; retry", status=503)

    async def _complete(self, call: ProxyCall) -> tuple[dict[str, Any], str | None]:
        return await self._routed(call, lambda adapter: self.upstream.complete(call, adapter))

    async def _stream(self, call: ProxyCall) -> Response:
        """Open the upstream stream (routing may repeat until its first chunk), then relay."""

        async def opened(adapter: str | None) -> tuple[AsyncIterator[dict[str, Any]], Any]:
            chunks = self.upstream.stream(call, adapter)
            try:
                return chunks, await anext(chunks)
            except BaseException:
                await chunks.aclose()
                raise

        (chunks, first), adapter = await self._routed(call, opened)
        watched = WatchedStream(
            call, chunks, mode=self.cfg.loop_stopping, detector=self.detector, metrics=self.metrics
        )

        async def body() -> AsyncIterator[bytes]:
            recorded = False
            try:
                async for part in watched.relay(first):
                    if part == DONE:  # offered before the client hears the end of it
                        self._record(call, _streamed(watched), adapter)
                        recorded = True
                    yield part
            finally:
                if not recorded:  # the client went away first: what it was sent is stored
                    self._record(call, _streamed(watched), adapter)

        return StreamingResponse(body(), media_type="text/event-stream")

    def _record(self, call: ProxyCall, texts: list[tuple[str, str]], adapter: str | None) -> None:
        if self.recorder is None:
            return
        for text, finish_reason in texts:
            completion = Completion(call.prompt.id, text, finish_reason, adapter=adapter,
                                    temperature=call.temperature, seed=call.seed)  # fmt: skip
            self.recorder.offer(*self.redactor.sample(call.prompt, completion))


def _choices_of(call: ProxyCall, data: dict[str, Any]) -> list[tuple[str, str]]:
    choices = sorted(data.get("choices") or (), key=lambda c: c.get("index", 0))
    if call.route == "chat":
        texts = [(c.get("message") or {}).get("content") or "" for c in choices]
    else:
        texts = [c.get("text") or "" for c in choices]
    return [(t, c.get("finish_reason") or "unknown") for t, c in zip(texts, choices, strict=True)]


def _streamed(watched: WatchedStream) -> list[tuple[str, str]]:
    return [
        (state.text, state.finish_reason or "abort") for _, state in sorted(watched.choices.items())
    ]


def _too_large(limit: int) -> ProxyError:
    return ProxyError(f"the body exceeds proxy.max_request_bytes = {limit} bytes", status=413)

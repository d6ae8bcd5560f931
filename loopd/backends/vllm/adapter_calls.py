"""One endpoint's adapter calls: load (retried, adopting an identical leftover), probe, unload.

vLLM's runtime LoRA API, one server at a time, with each answer mapped onto loopd's
adapter errors. ``AdapterLifecycle`` decides what to call where (every endpoint or
none, after a drain, after a restart); this module only knows how one call goes.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from loopd.backends.vllm.client import Endpoint, EndpointPool
from loopd.backends.vllm.errors import (
    AdapterAlreadyLoadedError,
    AdapterProbeError,
    AdapterRankError,
    AdapterUnavailableError,
    VllmAdapterError,
    adapter_error,
    error_message,
    retryable,
)
from loopd.backends.vllm.metrics import VllmMetrics

log = logging.getLogger("loopd.backends.vllm")


class AdapterCalls:
    """Load, probe and unload on a single endpoint of ``pool``."""

    def __init__(self, pool: EndpointPool, metrics: VllmMetrics):
        self.config = pool.config
        self._pool = pool
        self._metrics = metrics

    async def load_and_probe(self, endpoint: Endpoint, name: str, path: str) -> None:
        """Load, then prove it serves; a failed probe unloads again (and raises)."""
        await self.load(endpoint, name, path)
        try:
            await self.probe(endpoint, name)
        except BaseException:
            await self.unload(endpoint, name)
            raise

    async def load(self, endpoint: Endpoint, name: str, path: str) -> None:
        """One endpoint's load, retried on server trouble; adopts an identical leftover."""
        last: Exception | None = None
        for attempt in range(self.config.max_retries + 1):
            if attempt:
                self._metrics.retries.labels("load").inc()
                await asyncio.sleep(self._pool.backoff_delay(attempt - 1))
            last = await self._try_load(endpoint, name, path)
            if last is None:
                return
        if isinstance(last, VllmAdapterError):
            raise last
        raise AdapterUnavailableError(
            f"vLLM on {endpoint.url} unreachable while loading {name!r}: "
            f"{type(last).__name__}: {last}",
            adapter=name,
            endpoint=endpoint.url,
        )

    async def _try_load(self, endpoint: Endpoint, name: str, path: str) -> Exception | None:
        """One load request: None once loaded, the error if worth a retry; raises if not."""
        body = {"lora_name": name, "lora_path": path}
        try:
            response = await self._pool.admin_post(endpoint, "/v1/load_lora_adapter", body)
        except httpx.TransportError as error:
            endpoint.breaker.record_failure()
            return error
        status, message = response.status_code, error_message(response)
        if status == 200:
            endpoint.breaker.record_success()
            return None
        error = adapter_error(status, message, adapter=name, path=path, endpoint=endpoint.url)
        if isinstance(error, AdapterAlreadyLoadedError) and await self._serves_from(
            endpoint, name, path
        ):
            log.info("adopted adapter already on server", extra={"adapter": name})
            return None
        if retryable(status) and not isinstance(error, AdapterRankError):
            endpoint.breaker.record_failure()
            return error
        endpoint.breaker.record_success()
        raise error

    async def _serves_from(self, endpoint: Endpoint, name: str, path: str) -> bool:
        """Is ``name`` on the server from the same folder (a leftover we may adopt)?"""
        try:
            card = (await self._pool.served_models(endpoint)).get(name)
        except httpx.HTTPError:
            return False
        return card is not None and str(card.get("root", "")).rstrip("/") == path.rstrip("/")

    async def probe(self, endpoint: Endpoint, name: str) -> None:
        """A real one-token request on ``name``: loaded is not the same as serving."""
        body = {
            "model": name,
            "prompt": self.config.probe_prompt,
            "max_tokens": 1,
            "temperature": 0.0,
        }
        try:
            response = await self._pool.admin_post(endpoint, "/v1/completions", body)
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

    async def unload(self, endpoint: Endpoint, name: str) -> bool:
        """Best effort; True when gone (a 404 means already gone, e.g. after a restart)."""
        body = {"lora_name": name}
        try:
            response = await self._pool.admin_post(endpoint, "/v1/unload_lora_adapter", body)
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

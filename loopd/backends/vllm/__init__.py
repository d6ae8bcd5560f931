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

The package, in the order a request meets it: ``backend`` (the sync facade, generation,
events), ``completions`` (request JSON in, ``Completion``s out), ``client`` (endpoints,
breakers, retries), ``lifecycle`` and ``adapter_calls`` (what is loaded where, and the
load/probe/unload calls), with ``errors``, ``resilience`` (backoff, breaker) and
``metrics`` underneath; ``server`` starts a local vLLM for tests and benchmarks.
"""

from __future__ import annotations

from loopd.backends.vllm.backend import VllmBackend
from loopd.backends.vllm.completions import chosen_logprobs
from loopd.backends.vllm.errors import (
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
)
from loopd.config.vllm import VllmConfig

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

"""Serving backends: where completions come from and where adapters go live.

Everything else in loopd talks to serving through ``ServingBackend`` alone, so the
in-process engine (the CPU default) and a vLLM server over HTTP are interchangeable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from loopd.types import Completion, GenerationRequest

if TYPE_CHECKING:  # config composes backend sections, so import it lazily here
    from prometheus_client import CollectorRegistry

    from loopd.config import ServingConfig

EventSink = Callable[[str, dict[str, Any]], None]


class AdapterLoadError(RuntimeError):
    """Serving refused or failed to load an adapter; what served before still serves."""


class ServingBackend(Protocol):
    """The seam between loopd and the model server.

    ``generate`` returns, for each request, its ``n`` completions in order. Adapters are
    addressed by serving name; requests name the adapter they want, so a swap is simply
    "load the new name, then point requests at it".
    """

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]: ...

    def load_adapter(self, name: str, path: Path) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> list[str]: ...

    def health(self) -> bool: ...

    def close(self) -> None: ...


class ObservedBackend:
    """``backend`` unchanged, except that every exception one of its calls raises is
    shown to ``on_error`` (which counts it) before it propagates.

    The loop's stages call serving through this; the daemon's health check and the
    proxy use the backend itself. ``answer_logprobs`` (optional, used by the gate's
    likelihood check) is passed through only where the backend has it.
    """

    def __init__(self, backend: ServingBackend, on_error: Callable[[Exception], None]):
        self.inner = backend
        self._on_error = on_error
        if hasattr(backend, "answer_logprobs"):
            self.answer_logprobs = self._observed(backend.answer_logprobs)

    def _observed(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def observed(*args: Any, **kwargs: Any) -> Any:
            try:
                return call(*args, **kwargs)
            except Exception as error:
                self._on_error(error)
                raise

        return observed

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        return self._observed(self.inner.generate)(requests)

    def load_adapter(self, name: str, path: Path) -> None:
        self._observed(self.inner.load_adapter)(name, path)

    def unload_adapter(self, name: str) -> None:
        self._observed(self.inner.unload_adapter)(name)

    def adapters(self) -> list[str]:
        return self._observed(self.inner.adapters)()

    def health(self) -> bool:
        return self.inner.health()  # False is an answer, not an error

    def close(self) -> None:
        self.inner.close()


def open_backend(
    cfg: ServingConfig,
    base_model: Path,
    *,
    on_event: EventSink | None = None,
    registry: CollectorRegistry | None = None,
) -> ServingBackend:
    """The serving backend the config names, ready to serve.

    ``on_event`` receives the backend's own events (restarts seen, adapters reloaded,
    breaker state) for the store; ``registry`` takes its metrics.
    """
    if cfg.backend == "vllm":
        from loopd.backends.vllm import VllmBackend

        return VllmBackend(cfg.vllm, on_event=on_event, registry=registry)
    from loopd.backends.local import LocalBackend

    return LocalBackend(base_model, batch_size=cfg.batch_size, threads=cfg.threads)

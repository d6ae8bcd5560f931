"""Where the proxy sends a call: vLLM over HTTP, or the in-process engine.

Both answer in OpenAI's shapes: a response object, or a stream of chunk objects. vLLM's
are passed through as vLLM wrote them (the proxy sets only ``model``), so a response
through the proxy equals a direct one. The local engine's are built here from its
``Completion``s; its stream is the finished generation sent in token-sized chunks (it
cannot cancel a generation part-way, so loop stopping there saves no compute).

A call names the serving adapter it was routed to. When that adapter has been retired
since routing (a swap finished), the upstream raises ``AdapterRetired`` before anything
was sent and the proxy routes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from loopd.backends.local import LocalBackend
from loopd.backends.vllm import (
    AdapterNotLoadedError,
    ServingRequestError,
    ServingUnavailableError,
    VllmBackend,
)
from loopd.prompts import encode_prompt
from loopd.proxy.calls import ProxyCall, ProxyError
from loopd.types import Completion, GenerationRequest

PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class AdapterRetired(LookupError):
    """The adapter a call was routed to no longer serves; route it again."""


class Upstream(Protocol):
    async def base_model_name(self) -> str: ...

    async def complete(self, call: ProxyCall, adapter: str | None) -> dict[str, Any]: ...

    def stream(self, call: ProxyCall, adapter: str | None) -> AsyncIterator[dict[str, Any]]: ...


class VllmUpstream:
    def __init__(self, backend: VllmBackend):
        self.backend = backend

    async def base_model_name(self) -> str:
        return await self.backend.forward_base_model_name()

    async def complete(self, call: ProxyCall, adapter: str | None) -> dict[str, Any]:
        with _mapped_errors():
            body = await self._body(call, adapter)
            return await self.backend.forward(PATHS[call.route], body, adapter=adapter)

    async def stream(self, call: ProxyCall, adapter: str | None) -> AsyncIterator[dict[str, Any]]:
        with _mapped_errors():
            body = await self._body(call, adapter)
            # closed explicitly when the relay stops early: that is what cancels upstream
            stream = self.backend.forward_stream(PATHS[call.route], body, adapter=adapter)
            async with contextlib.aclosing(stream) as chunks:
                async for chunk in chunks:
                    yield chunk

    async def _body(self, call: ProxyCall, adapter: str | None) -> dict[str, Any]:
        return call.upstream_body(adapter or await self.base_model_name())


@contextlib.contextmanager
def _mapped_errors() -> Iterator[None]:
    """vLLM's errors, as the proxy answers them."""
    try:
        yield
    except AdapterNotLoadedError as error:
        raise AdapterRetired(str(error)) from error
    except ServingRequestError as error:
        raise ProxyError(str(error), status=error.status or 400) from error
    except ServingUnavailableError as error:
        raise ProxyError(f"serving unavailable: {error}", status=503) from error


class LocalUpstream:
    def __init__(self, backend: LocalBackend, *, default_max_tokens: int):
        self.backend = backend
        self.default_max_tokens = default_max_tokens

    async def base_model_name(self) -> str:
        return self.backend.base_path.name

    async def complete(self, call: ProxyCall, adapter: str | None) -> dict[str, Any]:
        completions, prompt_tokens = await self._generate(call, adapter)
        model = adapter or await self.base_model_name()
        choices = [_local_choice(call, i, c) for i, c in enumerate(completions)]
        used = sum(len(c.token_ids or ()) for c in completions)
        return _envelope(call, model, stream=False) | {
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": used,
                "total_tokens": prompt_tokens + used,
            },
        }

    async def stream(self, call: ProxyCall, adapter: str | None) -> AsyncIterator[dict[str, Any]]:
        completions, _ = await self._generate(call, adapter)
        head = _envelope(call, adapter or await self.base_model_name(), stream=True)
        for index, completion in enumerate(completions):
            pieces = self._pieces(completion)
            if call.route == "chat":
                yield head | {"choices": [_delta(index, {"role": "assistant", "content": ""})]}
            for piece in pieces:
                yield head | {"choices": [_piece(call, index, piece)]}
            yield head | {"choices": [_piece(call, index, "", completion.finish_reason)]}

    async def _generate(self, call: ProxyCall, adapter: str | None) -> tuple[list[Completion], int]:
        if adapter is not None and adapter not in self.backend.adapters():
            raise AdapterRetired(f"adapter {adapter!r} is not loaded")
        request = GenerationRequest(
            call.prompt,
            max_tokens=call.max_tokens or self.default_max_tokens,
            n=call.choices,
            temperature=call.temperature,
            top_p=float(call.body.get("top_p", 1.0)),
            seed=call.seed,
            adapter=adapter,
        )
        try:
            [completions] = await asyncio.to_thread(self.backend.generate, [request])
        except Exception:
            if adapter is not None and adapter not in self.backend.adapters():
                raise AdapterRetired(f"adapter {adapter!r} was unloaded meanwhile") from None
            raise
        prompt_tokens = len(encode_prompt(self.backend.tokenizer, call.prompt))
        return completions, prompt_tokens

    def _pieces(self, completion: Completion) -> list[str]:
        """The text cut where each token ends (a piece may hold a partial character)."""
        ids = list(completion.token_ids or ())
        decoded = [self.backend.tokenizer.decode(ids[: i + 1]) for i in range(len(ids))]
        pieces = [b[len(a) :] for a, b in zip(["", *decoded], decoded, strict=False)]
        return [p for p in pieces if p] or ([completion.text] if completion.text else [])


def _envelope(call: ProxyCall, model: str, *, stream: bool) -> dict[str, Any]:
    chat = call.route == "chat"
    kind = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
    prefix = "chatcmpl" if chat else "cmpl"
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": model}  # fmt: skip


def _local_choice(call: ProxyCall, index: int, completion: Completion) -> dict[str, Any]:
    if call.route == "chat":
        message = {"role": "assistant", "content": completion.text}
        return {"index": index, "message": message, "finish_reason": completion.finish_reason}
    return {"index": index, "text": completion.text, "finish_reason": completion.finish_reason,
            "logprobs": None}  # fmt: skip


def _piece(call: ProxyCall, index: int, text: str, finish: str | None = None) -> dict[str, Any]:
    if call.route == "chat":
        return _delta(index, {"content": text} if text else {}, finish)
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}


def _delta(index: int, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish}

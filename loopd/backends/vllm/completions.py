"""The OpenAI completions API both ways: a ``GenerationRequest`` in, ``Completion``s out.

Pure functions of the config and the JSON (no HTTP, no state), so the mapping between
loopd's types and vLLM's wire format reads, and tests, apart from the transport.
``/v1/completions`` takes a ``prompt``; ``/v1/chat/completions`` takes ``messages`` and
answers in a different shape (``message.content``, per-token logprobs under ``content``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from loopd.config.vllm import VllmConfig
from loopd.types import Completion, GenerationRequest

log = logging.getLogger("loopd.backends.vllm")
_COMPLETION_FIELDS = {f.name for f in dataclasses.fields(Completion)}


def api_path(chat: bool) -> str:
    """The endpoint path for a chat (``messages``) or a plain-text prompt."""
    return "/v1/chat/completions" if chat else "/v1/completions"


def request_body(
    config: VllmConfig, request: GenerationRequest, model: str, chat: bool
) -> dict[str, Any]:
    """vLLM's JSON for ``request`` on ``model``: sampling, the input, ``extra_body`` last."""
    body: dict[str, Any] = {"model": model, **_sampling(request)}
    if config.return_token_ids:
        body["return_token_ids"] = True
    return body | _input(config, request, chat) | config.extra_body


def _sampling(request: GenerationRequest) -> dict[str, Any]:
    if request.no_repeat_ngram_size:
        raise ValueError(
            "no_repeat_ngram_size: vLLM's OpenAI API has no such parameter; "
            "compare it on the local backend"
        )
    sampling: dict[str, Any] = {
        "max_tokens": request.max_tokens,
        "n": request.n,
        "temperature": request.temperature,
        "top_p": request.top_p,
    }
    if request.seed is not None:
        sampling["seed"] = request.seed
    if request.repetition_penalty != 1.0:
        sampling["repetition_penalty"] = request.repetition_penalty
    return sampling


def _input(config: VllmConfig, request: GenerationRequest, chat: bool) -> dict[str, Any]:
    """The prompt (or messages), and the logprobs request in that API's shape."""
    if chat:
        part: dict[str, Any] = {"messages": [dict(m) for m in request.prompt.messages or ()]}
        if config.logprobs is not None:
            part |= {"logprobs": True, "top_logprobs": config.logprobs}
        return part
    part = {"prompt": request.prompt.text or ""}
    if config.logprobs is not None:
        part["logprobs"] = config.logprobs
    return part


def parse_completions(
    request: GenerationRequest,
    data: dict[str, Any],
    *,
    chat: bool,
    base_name: str,
    latency: float,
) -> list[Completion]:
    """The answer's choices in index order; ``adapter`` is the model that actually served."""
    served = data.get("model")
    adapter = None if served == base_name else served
    if adapter != request.adapter:
        log.warning(
            "vllm answered from another model",
            extra={"requested": request.adapter, "served": served},
        )
    choices = sorted(data.get("choices", []), key=lambda c: c.get("index", 0))
    return [to_completion(request, choice, chat, adapter, latency) for choice in choices]


def to_completion(
    request: GenerationRequest,
    choice: dict[str, Any],
    chat: bool,
    adapter: str | None,
    latency: float,
) -> Completion:
    """One OpenAI choice as a loopd ``Completion``."""
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


def chosen_logprobs(logprobs: dict[str, Any] | None, *, chat: bool) -> tuple[float, ...] | None:
    """The sampled token's logprob per position, from either API's logprobs shape."""
    if not logprobs:
        return None
    if chat:
        return tuple(float(item["logprob"]) for item in logprobs.get("content") or ())
    values = logprobs.get("token_logprobs")
    return None if values is None else tuple(float(v) for v in values)


async def sse_chunks(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of an OpenAI server-sent-event stream, until ``[DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments, other fields
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)

"""What a client asked the proxy for, validated before anything is sent upstream.

The proxy checks only the fields it reads itself (the model, the prompt or messages,
``n``, ``max_tokens``, ``stream``); everything else passes through to vLLM untouched,
which validates it and whose 4xx the client then sees. A bad field is a 400 whose
message names the field and says what is allowed, in OpenAI's error shape, so the
official client raises ``BadRequestError`` with it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from loopd.types import Prompt

Route = Literal["completions", "chat"]
MAX_CHOICES = 16


class ProxyError(ValueError):
    """Answered with ``status`` and OpenAI's error body (4xx: the client's fault)."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class ProxyCall:
    """One validated client request: its route, its JSON body and its prompt."""

    route: Route
    body: dict[str, Any]
    prompt: Prompt

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream"))

    @property
    def max_tokens(self) -> int | None:
        return self.body.get("max_tokens") or self.body.get("max_completion_tokens")

    @property
    def choices(self) -> int:
        return self.body.get("n") or 1

    @property
    def temperature(self) -> float:
        return float(self.body.get("temperature", 1.0))  # OpenAI's default

    @property
    def seed(self) -> int | None:
        return self.body.get("seed")

    def upstream_body(self, model: str) -> dict[str, Any]:
        """The body as sent upstream: the client's, naming the serving model."""
        return self.body | {"model": model}


def parse_call(route: Route, raw: bytes) -> ProxyCall:
    """Validate a client body; raise ``ProxyError`` naming the first bad field."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProxyError(f"the body is not JSON: {error}") from None
    if not isinstance(body, dict):
        raise ProxyError("the body must be a JSON object")
    _check_model(body)
    _check_counts(body)
    prompt = _chat_prompt(body) if route == "chat" else _text_prompt(body)
    return ProxyCall(route, body, prompt)


def _check_model(body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ProxyError("model: a model name is required (see GET /v1/models)", param="model")


def _check_counts(body: dict[str, Any]) -> None:
    for name, low, high in (("max_tokens", 1, 1 << 20), ("max_completion_tokens", 1, 1 << 20)):
        value = body.get(name)
        if value is not None and not _int_within(value, low, high):
            raise ProxyError(f"{name}: an integer from {low} to {high}", param=name)
    n = body.get("n")
    if n is not None and not _int_within(n, 1, MAX_CHOICES):
        raise ProxyError(f"n: an integer from 1 to {MAX_CHOICES}", param="n")
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise ProxyError(f"{name}: a number", param=name)
    seed = body.get("seed")
    if seed is not None and not _int_within(seed, -(1 << 63), (1 << 63) - 1):
        raise ProxyError("seed: a 64-bit integer", param="seed")
    if not isinstance(body.get("stream", False), bool):
        raise ProxyError("stream: true or false", param="stream")


def _int_within(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _text_prompt(body: dict[str, Any]) -> Prompt:
    text = body.get("prompt")
    if isinstance(text, list) and len(text) == 1 and isinstance(text[0], str):
        text = text[0]
    if not isinstance(text, str):
        raise ProxyError(
            "prompt: one string (send a batch of prompts as separate requests)", param="prompt"
        )
    return Prompt(id=prompt_id(_utf8(text, "prompt")), text=text)


def _chat_prompt(body: dict[str, Any]) -> Prompt:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ProxyError("messages: a non-empty list of {role, content}", param="messages")
    kept = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ProxyError(f"{where}: an object with a string role", param=where)
        content = message.get("content")
        if not isinstance(content, str):
            raise ProxyError(f"{where}.content: a string (text-only chat)", param=where)
        kept.append({"role": message["role"], "content": _utf8(content, f"{where}.content")})
    return Prompt(id=prompt_id(None, kept), messages=tuple(kept))


def _utf8(text: str, param: str) -> str:
    """JSON may carry lone surrogates (``"\\ud800"``); no model or database takes them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProxyError(f"{param}: text with an unpaired surrogate", param=param) from None
    return text


def prompt_id(text: str | None, messages: Sequence[dict[str, str]] | None = None) -> str:
    """Production prompts are named by their words: a repeated prompt is one prompt, so
    its clean answers can become the chosen side of its loops' pairs. One derivation for
    the proxy, the ingest API and redaction, so the same words always get the same id."""
    chat = None if messages is None else json.dumps(list(messages), sort_keys=True)
    words = chat if chat is not None else (text or "")
    return "proxy-" + hashlib.sha256(words.encode()).hexdigest()[:20]

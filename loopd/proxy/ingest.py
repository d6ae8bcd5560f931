"""``POST /v1/loopd/samples``: completions a service got from vLLM directly, stored as
samples like the proxy's own.

Body: ``{"samples": [{"prompt": "..." | "messages": [...], "completion": "...",
"finish_reason": "length", "token_ids": [...], "model": "...", "prompt_id": "...",
"kind": "...", "reference": "..."}, ...]}``, at most ``proxy.max_ingest_samples``.
An ``Idempotency-Key`` header makes a retried post store nothing new and answer with the
first post's ids. The batch is validated whole before anything is stored (400 naming
the first bad field, e.g. ``samples[3].completion``); a 200 means it is in the database.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loopd.proxy.calls import ProxyError, prompt_id
from loopd.types import Completion, Prompt

MAX_KEY = 200


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Annotated[str, Field(min_length=1, max_length=64)]
    content: str


class IngestSample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    prompt: str | None = None
    messages: list[_Message] | None = Field(None, min_length=1)
    completion: str
    finish_reason: Annotated[str, Field(min_length=1, max_length=64)] = "unknown"
    token_ids: list[Annotated[int, Field(ge=0, lt=1 << 31)]] | None = None
    model: Annotated[str, Field(max_length=256)] | None = None
    prompt_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    kind: Annotated[str, Field(max_length=64)] | None = None
    reference: str | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> IngestSample:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of prompt (text) and messages (chat)")
        return self

    def as_prompt(self) -> Prompt:
        messages = None if self.messages is None else tuple(m.model_dump() for m in self.messages)
        return Prompt(
            self.prompt_id or prompt_id(self.prompt, messages),
            text=self.prompt,
            messages=messages,
            reference=self.reference,
            kind=self.kind,
        )

    def as_completion(self, prompt: Prompt) -> Completion:
        ids = None if self.token_ids is None else tuple(self.token_ids)
        return Completion(prompt.id, self.completion, self.finish_reason, token_ids=ids,
                          adapter=self.model)  # fmt: skip


class IngestBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    samples: list[IngestSample] = Field(min_length=1)


def parse_batch(raw: bytes, *, max_samples: int) -> list[tuple[Prompt, Completion]]:
    """Validate a whole batch; raise ``ProxyError`` naming the first bad field."""
    try:
        batch = IngestBatch.model_validate_json(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = _where(first["loc"])
        raise ProxyError(f"{where}: {first['msg']}", param=where) from None
    if len(batch.samples) > max_samples:
        raise ProxyError(
            f"samples: at most proxy.max_ingest_samples = {max_samples} per post; split the batch",
            param="samples",
        )
    rows = []
    for sample in batch.samples:  # pydantic's JSON parser already refuses lone surrogates
        prompt = sample.as_prompt()
        rows.append((prompt, sample.as_completion(prompt)))
    return rows


def idempotency_key(headers: Any) -> str | None:
    key = headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= MAX_KEY:
        raise ProxyError(f"Idempotency-Key: 1 to {MAX_KEY} characters", param="Idempotency-Key")
    return key


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(body)"

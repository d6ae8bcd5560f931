"""``[serving.vllm]``: the vLLM backend's configuration, validated at load.

Every field carries its meaning; bad values are rejected with a message that names the
fix. ``loopd.backends.vllm`` re-exports ``VllmConfig``; it lives here, with the rest of
the configuration, because config is below every module that reads it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class VllmConfig(BaseModel):
    """``[serving.vllm]``: where the vLLM servers are and how hard to try."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    endpoints: list[str] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000"],
        min_length=1,
        description="Base URLs of the vLLM replicas (no '/v1'). A deployment reaches all of "
        "them or is rolled back on all of them; generation is spread over them.",
    )
    served_model_name: str | None = Field(
        None,
        description="vLLM's name for the base model (its --served-model-name); unset = "
        "read from /v1/models (the entry without a parent).",
    )
    api_key: SecretStr | None = Field(
        None, description="Bearer token if vLLM was started with --api-key; unset = none."
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="TCP connect timeout, seconds.")
    request_timeout_s: float = Field(
        120.0, gt=0, description="Read timeout of one generation request, seconds."
    )
    admin_timeout_s: float = Field(
        30.0, gt=0, description="Timeout of adapter load/unload, model list and health calls."
    )
    max_retries: int = Field(
        4, ge=0, description="Retries of a failed call (transport error, 5xx, 429) after the first."
    )
    backoff_initial_s: float = Field(0.2, gt=0, description="Delay before the first retry.")
    backoff_max_s: float = Field(5.0, gt=0, description="Upper bound of one retry delay.")
    backoff_multiplier: float = Field(2.0, ge=1.0, description="Growth of the delay per retry.")
    backoff_jitter: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Each delay is scaled by a random factor in [1 - jitter, 1], so many "
        "clients do not retry in lockstep.",
    )
    breaker_failure_threshold: int = Field(
        5, ge=1, description="Consecutive failures that open an endpoint's circuit breaker."
    )
    breaker_reset_s: float = Field(
        5.0, gt=0, description="Seconds an open breaker refuses calls before one trial call."
    )
    drain_timeout_s: float = Field(
        30.0,
        ge=0,
        description="Longest wait, on unload, for in-flight requests on that adapter to end.",
    )
    drain_quiet_s: float = Field(
        0.5,
        ge=0,
        description="On unload, also wait until no request started on the adapter for this "
        "long: covers a caller that picked the old name just before the switch.",
    )
    probe_prompt: str = Field(
        "Hello", min_length=1, description="Prompt of the one-token probe after each load."
    )
    max_concurrent_requests: int = Field(
        64, ge=1, description="Generation requests in flight at once from this daemon."
    )
    monitor_interval_s: float = Field(
        5.0,
        ge=0,
        description="Seconds between background health checks that notice a restarted "
        "server and reload its adapters; 0 turns the monitor off.",
    )
    return_token_ids: bool = Field(
        True, description="Ask vLLM for generated token ids ('return_token_ids')."
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=20,
        description="Top-k logprobs to request per generated token; unset = none. The "
        "chosen token's logprob is kept.",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra fields merged into every generation request, e.g. vLLM's "
        "'repetition_detection' sampling parameters.",
    )

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, endpoints: list[str]) -> list[str]:
        cleaned = []
        for url in endpoints:
            url = url.rstrip("/")
            if not re.match(r"^https?://[^/\s]+$", url.removesuffix("/v1")):
                raise ValueError(
                    f"endpoint {url!r} is not a base URL; write it like 'http://host:8000'"
                )
            if url.endswith("/v1"):
                raise ValueError(f"endpoint {url!r}: drop the '/v1' suffix, loopd adds it")
            cleaned.append(url)
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("endpoints has duplicates; list each vLLM replica once")
        return cleaned

    @model_validator(mode="after")
    def _backoff_order(self) -> VllmConfig:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError(
                "backoff_max_s is below backoff_initial_s; raise backoff_max_s or lower "
                "backoff_initial_s"
            )
        return self

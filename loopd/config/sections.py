"""The sections of loopd's configuration, one class per ``[section]`` of the file.

Each field carries its meaning (``loopd config check`` and the docs read them); the
whole config and how a file becomes one live in ``loopd.config``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from loopd.config.vllm import VllmConfig

ChosenSource = Literal["reference", "resample", "truncate"]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _no_nul(path: Path) -> Path:
    if "\0" in str(path):
        raise ValueError("a path cannot hold a NUL character")
    return path


LocalPath = Annotated[Path, AfterValidator(_no_nul)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(Section):
    base: LocalPath | None = Field(
        None,
        description="Local Hugging Face folder of the base causal LM. Unset: the embedded "
        "tiny transcription model, built once (seeded) under state_dir/embedded.",
    )
    embedded_seed: int = Field(0, description="Seed for building the embedded model.")


class ServingConfig(Section):
    backend: Literal["local", "vllm"] = Field(
        "local",
        description="Serving backend. 'local' runs transformers+PEFT in this process "
        "(the CPU default); 'vllm' talks to vLLM servers over HTTP ([serving.vllm]).",
    )
    vllm: VllmConfig = Field(
        default_factory=VllmConfig, description="The vLLM servers, used when backend='vllm'."
    )
    max_tokens: int = Field(48, gt=0, description="Token limit for every generation.")
    batch_size: int = Field(32, gt=0, description="Prompts per forward batch (local).")
    threads: int | None = Field(
        1,
        gt=0,
        description="torch intra-op threads of the local engine; 1 suits tiny models best "
        "(more threads only add sync overhead); raise it for bigger ones; unset = torch's.",
    )


class SamplingConfig(Section):
    prompts: list[LocalPath] = Field(
        default_factory=list,
        description="Prompt files (JSON Lines) to sample from. Empty: the embedded "
        "training prompts.",
    )
    interval_seconds: float = Field(60.0, gt=0, description="Seconds between sampling jobs.")
    prompts_per_round: int = Field(64, gt=0, description="Prompts drawn per sampling job.")
    samples_per_prompt: int = Field(1, gt=0, description="Completions per drawn prompt.")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature (0 = greedy).")
    top_p: Probability = Field(1.0, description="Nucleus sampling mass.")
    seed: int = Field(0, description="Seed for drawing prompts and for sampling.")


class PairingConfig(Section):
    chosen_order: list[ChosenSource] = Field(
        default_factory=lambda: ["reference", "resample", "truncate"],
        min_length=1,
        description="How to make the chosen answer, in order of preference.",
    )
    resample_attempts: int = Field(
        2, ge=0, description="Resamples tried per prompt for a non-degenerate chosen answer."
    )
    resample_temperature: float = Field(0.8, gt=0.0, description="Temperature of those resamples.")
    min_truncated_chars: int = Field(
        8, ge=1, description="A chosen cut before the loop must keep at least this much text."
    )
    truncated_eos: Literal["never", "at_boundary"] = Field(
        "never",
        description="Whether a chosen cut before the loop is trained as a finished answer "
        "(end token after it) when the cut falls on a sentence or line end. 'never': the pair "
        "only teaches 'do not repeat here'. Measured on SmolLM2: 'at_boundary' halved "
        "held-out loops in one round but shortened answers on prompts that never looped by "
        "35-43%, since 'stop after a line' generalizes (README, 'A real model').",
    )
    truncate_at: Literal["sentence", "first_repeat"] = Field(
        "sentence",
        description="Where a truncated chosen answer ends. 'sentence': at the last sentence "
        "or line end before the loop. 'first_repeat': after the loop's first occurrence, so "
        "chosen and rejected differ only in the repeats (never trained with an end token). "
        "Measured on SmolLM2: 'first_repeat' cut held-out loops 4x more in one round.",
    )

    @model_validator(mode="after")
    def _unique_sources(self) -> PairingConfig:
        if len(set(self.chosen_order)) != len(self.chosen_order):
            raise ValueError("chosen_order lists a source twice; name each source once")
        return self


class TrainingConfig(Section):
    min_fresh_pairs: int = Field(
        16, gt=0, description="A training round starts once this many untrained pairs exist."
    )
    max_fresh_pairs: int = Field(256, gt=0, description="Newest pairs used per round, at most.")
    replay_fraction: Probability = Field(
        0.25, description="Older, already-trained pairs mixed in, as a share of fresh ones."
    )
    reference_policy: Literal["base", "deployed"] = Field(
        "deployed",
        description="DPO reference: 'deployed' = the adapter the round continues from "
        "(a trust region around what serves now); 'base' = the bare base model.",
    )
    loss_type: list[Literal["sigmoid", "sft", "ipo", "hinge", "robust"]] = Field(
        default_factory=lambda: ["sigmoid", "sft"],
        min_length=1,
        description="TRL DPO loss terms; 'sft' on the chosen side guards answer length.",
    )
    beta: float = Field(0.1, gt=0.0, description="DPO beta (strength of the reference tie).")
    learning_rate: float = Field(
        2e-3,
        gt=0.0,
        le=1.0,
        description="AdamW learning rate of the LoRA (suits the embedded tiny model; a "
        "rank-8 LoRA on SmolLM2-135M needed 5e-4: 5e-5 and 2e-4 barely moved it).",
    )
    epochs: float = Field(2.0, gt=0.0, description="Passes over the round's pairs.")
    batch_size: int = Field(8, gt=0, description="Pairs per optimizer step.")
    micro_batch_size: int | None = Field(
        None,
        gt=0,
        description="Pairs per forward/backward pass; gradients accumulate up to batch_size, "
        "so the update is the same, only the peak memory changes. Unset: the largest that "
        "fits memory_budget_gb, estimated from the model's shape and max_length.",
    )
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="Peak memory one round may use, in GiB (host RAM on a CPU, device memory "
        "on a GPU). Unset: 60% of what is available when the round starts, so the trainer "
        "never pushes the serving engine beside it into the OOM killer's reach.",
    )
    max_length: int = Field(
        256,
        gt=8,
        description="Tokens of prompt + answer per sequence. A pair whose prompt and chosen "
        "answer do not fit is dropped and counted; an over-long rejected loop is cut to fit "
        "(its start is what teaches) and counted.",
    )
    max_loop_tokens: int | None = Field(
        None,
        gt=0,
        description="Tokens of a rejected loop kept after the loop starts (or after it "
        "departs from the chosen answer, when that is later); the rest is cut "
        "(and counted as rejected_cut). The first repeats are where the model chose to loop; "
        "the hundredth repeat teaches nothing and costs attention quadratic in length. "
        "Unset: keep the whole loop (up to max_length).",
    )
    lora_rank: int = Field(8, gt=0, description="LoRA rank of a new adapter.")
    lora_alpha: int = Field(16, gt=0, description="LoRA alpha of a new adapter.")
    lora_dropout: Probability = Field(0.0, description="LoRA dropout.")
    target_modules: list[str] = Field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        min_length=1,
        description="Modules the LoRA adapts (never lm_head: PEFT+TRL reject it).",
    )
    timeout_seconds: float = Field(
        900.0, gt=0, description="A round's child process is killed after this long."
    )
    retry_backoff_seconds: float = Field(
        60.0,
        ge=0,
        description="After a failed round, wait this long before the next try on the same "
        "pairs and settings, doubling after each further failure (at most an hour).",
    )
    max_failed_attempts: int = Field(
        3,
        ge=1,
        description="Failed rounds in a row on the same pairs and settings after which they "
        "are quarantined: no more rounds until the settings change or new pairs arrive.",
    )
    seed: int = Field(0, description="Seed of the training round.")
    threads: int | None = Field(
        1, gt=0, description="torch threads in the trainer process; unset = torch's."
    )
    launcher: Literal["process", "accelerate"] = Field(
        "process",
        description="How the trainer runs: 'process' = one child process (one device); "
        "'accelerate' = the same entry point under `accelerate launch` with num_processes "
        "ranks (data parallel, or DeepSpeed / FSDP through accelerate_config). Only rank 0 "
        "saves the adapter and reports.",
    )
    num_processes: int = Field(
        1, ge=1, description="Ranks under launcher='accelerate' (GPUs, or CPU processes)."
    )
    accelerate_config: LocalPath | None = Field(
        None,
        description="An `accelerate config` YAML (DeepSpeed ZeRO-2/3, FSDP: examples in "
        "deploy/accelerate/); its num_processes is overridden by ours. Unset: plain data "
        "parallel over num_processes ranks.",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Training precision. 'auto': bf16 on a GPU that supports it, else fp32 "
        "(CPU training in bf16 is slow and TRL's bf16 default is wrong there).",
    )
    gradient_checkpointing: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Recompute activations to save memory. 'auto': on with a GPU (7B+ "
        "models need it), off on a CPU (measured ~9x slower there, with no memory need).",
    )
    keep_versions: int | None = Field(
        None,
        ge=2,
        description="Adapter version folders kept on disk; older ones are pruned after each "
        "published round, never the live one, its parent, a pinned one or a candidate in "
        "canary. Unset: keep every version.",
    )

    @model_validator(mode="after")
    def _one_process_unless_accelerate(self) -> TrainingConfig:
        if self.launcher == "process" and self.num_processes > 1:
            raise ValueError(
                f"training.num_processes={self.num_processes} needs "
                'training.launcher = "accelerate" (the process launcher runs one rank)'
            )
        if self.launcher == "process" and self.accelerate_config is not None:
            raise ValueError(
                'training.accelerate_config is read only with training.launcher = "accelerate"'
            )
        return self

    @model_validator(mode="after")
    def _micro_batch_divides(self) -> TrainingConfig:
        micro = self.micro_batch_size
        if micro is not None and self.batch_size % micro:
            raise ValueError(
                f"micro_batch_size={micro} does not divide batch_size={self.batch_size}; "
                "choose a divisor (or leave micro_batch_size unset to fit memory_budget_gb)"
            )
        return self


class GateConfig(Section):
    """When a candidate may replace the live adapter (``loopd/gate.py``).

    Degeneration must fall *significantly* (exact McNemar on the held-out prompts the two
    disagree on); each quality check compares the candidate with the live adapter on the
    same prompts and must stay within its tolerance. Intervals are stored with every
    decision.
    """

    heldout: LocalPath | None = Field(
        None,
        description="Held-out prompt file (JSON Lines), never trained on. Unset: the "
        "embedded held-out prompts.",
    )
    heldout_size: int | None = Field(
        None,
        ge=1,
        description="Prompts of the held-out file the gate measures on at a time (unset: "
        "all of them). The rest wait to be rotated in by refresh_share.",
    )
    refresh_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="After each promotion, and while the live adapter is at the floor, "
        "this share of the active held-out prompts is replaced by prompts of the file not "
        "used yet, so selection does not overfit one fixed set (old results are kept).",
    )
    significance: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="Promote only if the drop in loops is significant at this level "
        "(one-sided exact McNemar). 0.05 needs the candidate to fix at least 5 prompts.",
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="Confidence level of the intervals reported."
    )
    bootstrap_resamples: int = Field(
        1000, ge=100, description="Paired bootstrap resamples behind each interval."
    )
    min_degeneration_drop: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Besides significance, the held-out degeneration rate must fall by "
        "more than this (absolute share).",
    )
    max_cer_increase: float = Field(
        0.0,
        ge=0.0,
        description="Largest allowed rise of CER against the live adapter (prompts with "
        "references).",
    )
    max_exact_match_drop: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Largest allowed fall of the share of answers equal to their "
        "reference, against the live adapter.",
    )
    min_length_ratio: float = Field(
        0.9,
        ge=0.0,
        description="Candidate's answer length over the live adapter's, on the prompts "
        "neither loops on, must stay above this (loops fixed by truncation are a "
        "regression).",
    )
    max_ending_drop: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Largest allowed fall of the share of clean answers that end on their "
        "own (end of sequence, not the token limit), against the live adapter.",
    )
    canary_share: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Share of each sampling job sent to a candidate that passed the "
        "held-out gate, before it is promoted (0: no canary, promote at once). Its sampled "
        "loop rate must not rise above the live adapter's (deploy.watch_max_rise, Fisher "
        "exact at gate.significance).",
    )
    canary_samples: int = Field(
        64, ge=1, description="Sampled answers from the candidate before the canary decides."
    )
    max_likelihood_drop: float = Field(
        0.3,
        ge=0.0,
        description="Largest allowed fall (nats per token) of the mean log-likelihood of "
        "the live adapter's clean held-out answers under the candidate: a candidate that "
        "forgot how to answer finds them unlikely.",
    )


class DeployConfig(Section):
    adapter_prefix: str = Field(
        "loopd",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Serving names are '<prefix>-vNNNN', one new name per version, so a "
        "server never confuses two versions (letters, digits, '.', '_', '-').",
    )
    watch_samples: int = Field(
        200,
        ge=0,
        description="After a deployment, compare the live loop rate over this many sampled "
        "answers with the rate before it, and roll back to the parent if it rose (0: no "
        "watch).",
    )
    watch_max_rise: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="Roll back when the sampled loop rate after a deployment exceeds the "
        "rate before it by more than this, significantly (one-sided Fisher exact test at "
        "gate.significance).",
    )


ADMIN_TOKEN_ENV = "LOOPD_ADMIN_TOKEN"


class DaemonConfig(Section):
    host: str = Field("127.0.0.1", description="Address of the HTTP endpoints.")
    port: int = Field(
        9464, ge=0, le=65535, description="Port of /metrics, /status and /admin (0 = any)."
    )
    retention_days: float = Field(
        30.0, gt=0, description="Samples older than this that no pair uses are deleted."
    )
    retention_max_samples: int | None = Field(
        None,
        gt=0,
        description="Also keep at most this many samples (the proxy stores every answer): "
        "the oldest that no pair uses go first; a loop not yet paired is never deleted.",
    )
    retention_interval_seconds: float = Field(3600.0, gt=0, description="Retention job period.")
    train_check_seconds: float = Field(
        30.0, gt=0, description="How often to check whether enough fresh pairs exist."
    )
    log_format: Literal["json", "text"] = Field("json", description="Log line format.")
    admin_token: SecretStr | None = Field(
        default_factory=lambda: os.environ.get(ADMIN_TOKEN_ENV) or None,
        min_length=16,
        description="Bearer token the /admin endpoints (reload, pause, resume, rounds, the "
        f"adapter verbs) require; default ${ADMIN_TOKEN_ENV}. Unset: they are disabled.",
    )
    watch_config: bool = Field(
        True,
        description="Reload the config when its file changes (as on SIGHUP and POST "
        "/admin/reload); a file that does not validate leaves the running config in force.",
    )
    shutdown_timeout_seconds: float = Field(
        60.0,
        gt=0,
        description="On SIGTERM, how long running jobs get to finish (a training child is "
        "killed at once) before the daemon exits anyway.",
    )


PROXY_API_KEYS_ENV = "LOOPD_PROXY_API_KEYS"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _keys_from_env() -> list[SecretStr]:
    return [SecretStr(k) for k in os.environ.get(PROXY_API_KEYS_ENV, "").split(",") if k.strip()]


class ProxyConfig(Section):
    """The OpenAI-compatible proxy clients call instead of vLLM (``loopd.proxy``)."""

    enabled: bool = Field(False, description="Serve /v1/* beside the daemon's jobs.")
    host: str = Field("127.0.0.1", description="Address the proxy listens on.")
    port: int = Field(8100, ge=0, le=65535, description="Port of the proxy (0 = any).")
    model_name: str = Field(
        "loopd",
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
        description="The one model name clients use; it always reaches the live adapter.",
    )
    api_keys: list[SecretStr] = Field(
        default_factory=_keys_from_env,
        description="Bearer keys clients must send (not the admin token); default "
        f"${PROXY_API_KEYS_ENV}, comma-separated. Empty: no key asked, loopback only.",
    )
    loop_stopping: Literal["off", "log", "stop"] = Field(
        "log",
        description="Streams: off = not watched; log = a loop is counted and logged; stop = "
        'generation is cancelled at the loop and the stream ends with finish_reason "repetition".',
    )
    record: bool = Field(True, description="Detect and store every completion served.")
    queue_size: int = Field(
        10_000, gt=0, description="Completions waiting to be stored, at most; past it, dropped."
    )
    write_batch: int = Field(256, gt=0, description="Completions stored per transaction, at most.")
    max_request_bytes: int = Field(
        1 << 20, gt=0, description="Larger request bodies are refused with 413."
    )
    max_ingest_samples: int = Field(
        1000, gt=0, description="Samples one POST /v1/loopd/samples may carry."
    )
    redact_patterns: list[str] = Field(
        default_factory=list,
        description="Regular expressions (Python re) whose matches in prompts and answers "
        "are replaced by redact_with before anything is stored (proxy and ingest).",
    )
    redact_with: str = Field("[redacted]", description="What a redacted match becomes.")

    @field_validator("redact_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            try:
                if re.compile(pattern).search(""):
                    raise ValueError(f"[{index}] {pattern!r} matches the empty string")
            except re.error as error:
                raise ValueError(f"[{index}] {pattern!r} is not a valid regex: {error}") from None
        return patterns

    @model_validator(mode="after")
    def _keys_off_loopback(self) -> ProxyConfig:
        if self.enabled and not self.api_keys and self.host not in LOOPBACK_HOSTS:
            raise ValueError(
                f"api_keys: the proxy listens on {self.host}, beyond this machine, and no key "
                f"is set; set proxy.api_keys (or ${PROXY_API_KEYS_ENV}) or listen on 127.0.0.1"
            )
        if any(len(k.get_secret_value()) < 16 for k in self.api_keys):
            raise ValueError("api_keys: each key must be at least 16 characters")
        return self

"""The plain data that flows between loopd's stages.

Stages never reach into each other's internals: ``sample`` returns ``Completion``s,
``detect`` returns a ``Detection``, the store hands back ``Sample``s, ``pair`` makes
``Pair``s, ``train`` produces a ``TrainResult``, ``evaluate`` an ``EvalReport`` and a
``GateDecision``, ``deploy`` records ``AdapterVersion``s. Keeping these frozen and free of
behaviour is what lets each stage be tested alone and replaced later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Prompt:
    """One prompt, as read from a prompt file (JSON Lines) or an ingest source.

    Exactly one of ``text`` and ``messages`` is set; ``messages`` is a chat list rendered
    with the model's chat template by the serving backend.
    """

    id: str
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    reference: str | None = None
    kind: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """Ask the serving backend for ``n`` completions of one prompt from one adapter."""

    prompt: Prompt
    max_tokens: int
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    adapter: str | None = None  # serving name; None means the bare base model
    # Decode-time loop remedies, kept for comparison (bench/efficacy.py): both cost quality
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


@dataclass(frozen=True)
class Completion:
    """One generated continuation and what the backend said about how it ended."""

    prompt_id: str
    text: str
    finish_reason: str  # "stop", "length", "repetition", ...
    token_ids: tuple[int, ...] | None = None
    stop_reason: str | int | None = None
    adapter: str | None = None
    temperature: float = 0.0
    seed: int | None = None
    latency_s: float = 0.0
    token_logprobs: tuple[float, ...] | None = None  # of each chosen token, when asked for


@dataclass(frozen=True)
class Detection:
    """The detector's verdict on one completion, and where the loop is when there is one.

    Offsets are into the completion text (``loop_start``, characters) and its token ids
    (``loop_start_token``) when those were given. ``loop_fraction`` is the share of the
    output's characters that lie inside the loop.
    """

    degenerate: bool
    rule: str | None = None
    score: float = 0.0
    loop_start: int | None = None
    loop_start_token: int | None = None
    period: int | None = None
    repeats: float | None = None
    loop_fraction: float = 0.0


CLEAN = Detection(degenerate=False)


@dataclass(frozen=True)
class Sample:
    """A stored completion with its detection; the unit the store keeps forever."""

    id: int
    prompt: Prompt
    completion: Completion
    detection: Detection
    created_at: float


@dataclass(frozen=True)
class Pair:
    """A DPO preference pair; ``rejected`` is always the model's own degenerate output.

    ``chosen_eos`` / ``rejected_eos``: whether that answer *ended* (and is trained with
    the end-of-sequence token after it) or was cut off (and is trained without, so the
    model is never taught to stop mid-sentence, nor to end a loop it should not start).
    """

    prompt: Prompt
    chosen: str
    rejected: str
    chosen_source: str  # "reference" | "resample" | "truncate"
    sample_id: int
    id: int | None = None
    chosen_eos: bool = True
    rejected_eos: bool = False
    loop_start: int | None = None  # character offset of the loop in ``rejected``


@dataclass(frozen=True)
class AdapterVersion:
    """A complete, immutable adapter folder and where it came from."""

    version: int
    path: Path
    parent: int | None
    created_at: float
    round_id: int | None = None

    @property
    def name(self) -> str:
        return f"v{self.version:04d}"


@dataclass(frozen=True)
class TrainResult:
    """What one training round produced; ``adapter_dir`` is complete when this exists."""

    adapter_dir: Path
    pairs_used: int
    steps: int
    seconds: float
    final_loss: float | None = None
    dropped_overlong: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalAnswer:
    """One held-out answer, as the gate needs it to compare two adapters prompt by prompt."""

    prompt_id: str
    degenerate: bool
    length: int  # characters, surrounding whitespace stripped
    tokens: int
    finish_reason: str
    edits: int | None = None  # edit distance to the reference, where there is one
    reference_length: int | None = None
    text: str = ""  # the answer itself: the gate scores the live one's under the candidate

    @property
    def ended(self) -> bool:
        """The answer stopped on its own (end of sequence), not at the token limit."""
        return self.finish_reason == "stop"

    @property
    def exact(self) -> bool | None:
        """The answer equals its reference (None: no reference)."""
        return None if self.edits is None else self.edits == 0


@dataclass(frozen=True)
class EvalReport:
    """How one adapter did on the held-out prompts."""

    adapter: str | None
    prompts: int
    degeneration_rate: float
    cer: float | None
    mean_length: float
    length_ratio: float | None  # mean clean output length / mean reference length
    mean_clean_length: float = 0.0  # mean length of the outputs that did not loop
    answers: tuple[EvalAnswer, ...] = ()


@dataclass(frozen=True)
class Likelihood:
    """Mean token log-likelihood of the live adapter's clean held-out answers, by prompt
    id, under the candidate and under the live adapter itself."""

    candidate: dict[str, float]
    live: dict[str, float]


@dataclass(frozen=True)
class Check:
    """One thing the gate measured: its estimate, interval, the bar, and the verdict.

    ``estimate`` is None when the check could not be measured (no references, no
    prompts both adapters answered cleanly, a backend that cannot score answers); an
    unmeasured check passes and says so in ``detail``.
    """

    name: str
    passed: bool
    detail: str
    estimate: float | None = None
    interval: tuple[float, float] | None = None
    bar: str = ""  # the configured tolerance, as "<= 0.020"


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict: promote the candidate or keep the live adapter, and why."""

    promote: bool
    reason: str
    candidate: EvalReport
    live: EvalReport
    checks: tuple[Check, ...] = ()

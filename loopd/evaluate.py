"""The evaluate stage: held-out answers of one adapter, scored for the gate.

Greedy answers on held-out prompts (never trained on) repeat exactly for the same
weights, so a report is measured once per serving name and compared prompt by prompt in
``loopd.gate``. Each answer keeps what the gate's checks need: whether it looped, its
length and ending, its edits against a reference where there is one, and its text (the
live adapter's clean answers are scored under the candidate).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import fmean

from rapidfuzz.distance import Levenshtein

from loopd.backends import ServingBackend
from loopd.types import (
    Completion,
    Detection,
    EvalAnswer,
    EvalReport,
    GenerationRequest,
    Likelihood,
    Prompt,
)

Detector = Callable[[Completion], Detection]
REPORTS_KEPT = 8  # held-out reports remembered, by serving name


def character_error_rate(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus CER: total edit distance over total reference characters.

    >>> character_error_rate(["kitten"], ["sitting"])  # 3 edits over 7 characters
    0.42857142857142855
    """
    edits = sum(
        Levenshtein.distance(h.strip(), r.strip())
        for h, r in zip(hypotheses, references, strict=True)
    )
    return edits / max(1, sum(len(r.strip()) for r in references))


def evaluate(
    backend: ServingBackend,
    prompts: Sequence[Prompt],
    *,
    adapter: str | None,
    max_tokens: int,
    detect: Detector,
) -> EvalReport:
    """Greedy answers of ``adapter`` on ``prompts``, scored for loops, CER and length."""
    requests = [
        GenerationRequest(prompt=p, max_tokens=max_tokens, adapter=adapter) for p in prompts
    ]
    completions = [group[0] for group in backend.generate(requests)]
    answers = [
        score_answer(p, c, detect(c).degenerate) for p, c in zip(prompts, completions, strict=True)
    ]
    return report_of(adapter, answers)


def score_answer(prompt: Prompt, completion: Completion, degenerate: bool) -> EvalAnswer:
    text = completion.text.strip()
    reference = prompt.reference.strip() if prompt.reference else None
    return EvalAnswer(
        prompt_id=prompt.id,
        degenerate=degenerate,
        length=len(text),
        tokens=len(completion.token_ids or ()),
        finish_reason=completion.finish_reason,
        edits=None if reference is None else Levenshtein.distance(text, reference),
        reference_length=None if reference is None else len(reference),
        text=completion.text,
    )


def report_of(adapter: str | None, answers: Sequence[EvalAnswer]) -> EvalReport:
    referenced = [a for a in answers if a.edits is not None]
    clean = [a.length for a in answers if not a.degenerate]
    return EvalReport(
        adapter=adapter,
        prompts=len(answers),
        degeneration_rate=sum(a.degenerate for a in answers) / max(1, len(answers)),
        cer=(
            sum(a.edits for a in referenced) / max(1, sum(a.reference_length for a in referenced))
            if referenced
            else None
        ),
        mean_length=fmean(a.length for a in answers) if answers else 0.0,
        length_ratio=_reference_length_ratio(answers),
        mean_clean_length=fmean(clean) if clean else 0.0,
        answers=tuple(answers),
    )


def _reference_length_ratio(answers: Sequence[EvalAnswer]) -> float | None:
    """Clean answers' total length over their references', where there are references.

    Loops are left out because a looping answer is long for the wrong reason: it would
    hide an adapter that shortens every answer it does not loop on.
    """
    clean = [a for a in answers if a.reference_length is not None and not a.degenerate]
    if not clean:
        return None
    return sum(a.length for a in clean) / max(1, sum(a.reference_length for a in clean))


def clean_answer_likelihood(
    backend: ServingBackend,
    prompts: Sequence[Prompt],
    live: EvalReport,
    *,
    adapter: str | None,
) -> dict[str, float] | None:
    """Mean token log-likelihood under ``adapter`` of the live report's clean answers.

    None when the backend cannot score given answers (``answer_logprobs``).
    """
    score = getattr(backend, "answer_logprobs", None)
    if score is None:
        return None
    by_id = {p.id: p for p in prompts}
    clean = [a for a in live.answers if not a.degenerate and a.text and a.prompt_id in by_id]
    values = score([(by_id[a.prompt_id], a.text) for a in clean], adapter=adapter)
    return {a.prompt_id: value for a, value in zip(clean, values, strict=True)}


class HeldoutEvaluator:
    """Held-out reports and likelihoods of adapters, each measured once per serving name.

    A serving name always means the same weights (a new name per version), and the
    held-out prompts, token limit and detector are fixed for a loop, so greedy answers
    repeat: the live adapter's report is its report as last round's candidate, which
    saves a whole held-out pass per round.
    """

    def __init__(
        self,
        backend: ServingBackend,
        prompts: Sequence[Prompt],
        *,
        max_tokens: int,
        detect: Detector,
        on_report: Callable[[str | None, Sequence[EvalAnswer]], None] | None = None,
    ):
        """``on_report(adapter, answers)`` sees each report once, when it is measured."""
        self.backend = backend
        self.on_report = on_report
        self.prompts = prompts
        self.max_tokens = max_tokens
        self.detect = detect
        self._reports: dict[str | None, EvalReport] = {}
        self._likelihoods: dict[tuple[str | None, str | None], dict[str, float] | None] = {}

    def report(self, adapter: str | None) -> EvalReport:
        if adapter not in self._reports:
            if len(self._reports) >= REPORTS_KEPT:
                self._reports.pop(next(iter(self._reports)))
            self._reports[adapter] = evaluate(
                self.backend,
                self.prompts,
                adapter=adapter,
                max_tokens=self.max_tokens,
                detect=self.detect,
            )
            if self.on_report is not None:
                self.on_report(adapter, self._reports[adapter].answers)
        return self._reports[adapter]

    def likelihood(self, live: str | None, candidate: str) -> Likelihood | None:
        """How likely the live adapter's clean answers are under each adapter (None: the
        backend cannot score answers)."""
        scores = {}
        for adapter in (live, candidate):
            if (live, adapter) not in self._likelihoods:
                self._likelihoods[live, adapter] = clean_answer_likelihood(
                    self.backend, self.prompts, self.report(live), adapter=adapter
                )
            scores[adapter] = self._likelihoods[live, adapter]
        if scores[live] is None or scores[candidate] is None:
            return None
        return Likelihood(candidate=scores[candidate], live=scores[live])

"""Rounds in the foreground: ``loopd rounds --config FILE`` and ``loopd demo``.

Round 0 measures the live adapter (the bare base on a fresh state) on the held-out
prompts. Each later round is what the daemon does, one after the other: sample the live
adapter, detect and store loops, pair them, train a DPO round in a child process, gate
the candidate on the held-out prompts and deploy it if it passes. Every round's numbers
become a table row, optionally JSON and a plot. ``loopd demo`` is this on the embedded
default with a fresh state each run; ``loopd rounds`` runs on the model, prompts and
state the config names.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import fmean

from loopd.backends import open_backend
from loopd.config import LoopdConfig
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.store import Store
from loopd.train import ProgressHook
from loopd.types import EvalReport


@dataclass(frozen=True)
class RoundRow:
    round: int
    adapter: str
    degeneration_rate: float
    cer: float | None
    mean_length: float
    pairs: int
    train_seconds: float
    decision: str
    mean_tokens: float = 0.0
    hit_limit: float = 0.0  # share of answers the token limit cut
    seconds: float = 0.0  # wall time since round 0 began


def run_rounds(
    cfg: LoopdConfig,
    *,
    rounds: int,
    on_round: Callable[[RoundRow], None],
    on_train_progress: ProgressHook | None = None,
) -> list[RoundRow]:
    """Round 0 measures the live adapter; rounds 1..N sample, pair, train, gate, deploy."""
    inputs = resolve_inputs(cfg)
    store = Store(cfg.db_path)
    backend = open_backend(
        cfg.serving,
        inputs.base_model,
        on_event=lambda kind, payload: store.record_event(kind, **payload),
    )
    loop = Loop(cfg, inputs, backend=backend, store=store)
    started = time.monotonic()
    live = loop.recover()
    clock = lambda: time.monotonic() - started  # noqa: E731
    baseline = loop.evaluate(loop.deployer.live_name())
    results = [_row(0, live.name if live else "base", baseline, 0, 0.0, "baseline", clock())]
    on_round(results[0])
    for number in range(1, rounds + 1):
        loop.sample_round()
        results.append(_training_row(loop, number, on_train_progress, clock))
        on_round(results[-1])
    backend.close()
    store.close()
    return results


def _training_row(
    loop: Loop, number: int, on_progress: ProgressHook | None, clock: Callable[[], float]
) -> RoundRow:
    skipped = "no new loops" if loop.store.count_fresh_pairs() == 0 else loop.skip_reason()
    if skipped:
        live = loop.deployer.live()
        report = loop.evaluate(loop.deployer.serving_name(live))
        name = live.name if live else "base"
        return _row(number, name, report, 0, 0.0, f"skipped: {skipped}", clock())
    report = loop.training_round(on_progress)
    pairs = report.fresh_pairs + report.replay_pairs
    seconds = report.train.seconds if report.train else 0.0
    name = report.candidate.name if report.candidate else "-"
    if report.decision is None:
        evaluated = loop.evaluate(loop.deployer.live_name())
        decision = f"{report.status}: {report.error}"
        return _row(number, name, evaluated, pairs, seconds, decision, clock())
    decision = report.status
    if report.status != "promoted":
        decision += f": {loop.store.rounds(limit=1)[0]['decision']}"
    return _row(number, name, report.decision.candidate, pairs, seconds, decision, clock())


def _row(
    number: int,
    adapter: str,
    report: EvalReport,
    pairs: int,
    train_seconds: float,
    decision: str,
    elapsed: float,
) -> RoundRow:
    answers = report.answers
    return RoundRow(
        round=number,
        adapter=adapter,
        degeneration_rate=report.degeneration_rate,
        cer=report.cer,
        mean_length=report.mean_length,
        pairs=pairs,
        train_seconds=train_seconds,
        decision=decision,
        mean_tokens=fmean(a.tokens for a in answers) if answers else 0.0,
        hit_limit=sum(a.finish_reason == "length" for a in answers) / max(1, len(answers)),
        seconds=elapsed,
    )


def format_table(rounds: list[RoundRow]) -> str:
    header = (
        f"{'round':>5}  {'adapter':<8} {'loops':>6} {'CER':>6} {'mean len':>8} {'tokens':>6}"
        f" {'at limit':>8} {'pairs':>5} {'train s':>7} {'elapsed':>7}  decision"
    )
    lines = [header, "-" * len(header)]
    for r in rounds:
        cer = "-" if r.cer is None else f"{r.cer:.3f}"
        lines.append(
            f"{r.round:>5}  {r.adapter:<8} {r.degeneration_rate:>6.1%} {cer:>6}"
            f" {r.mean_length:>8.1f} {r.mean_tokens:>6.1f} {r.hit_limit:>8.1%} {r.pairs:>5}"
            f" {r.train_seconds:>7.1f} {_minutes(r.seconds):>7}  {r.decision}"
        )
    return "\n".join(lines)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def summary(rounds: list[RoundRow]) -> str:
    """One line: how far the live adapter got against round 0."""
    first = rounds[0]
    promoted = [r for r in rounds[1:] if r.decision == "promoted"]
    if not promoted:
        return f"no adapter was promoted; {first.adapter} still serves"
    live = promoted[-1]
    cut = 1 - live.degeneration_rate / first.degeneration_rate if first.degeneration_rate else 0
    cer = "" if first.cer is None else f", CER {first.cer:.3f} -> {live.cer:.3f}"
    return (
        f"live adapter {live.adapter}: held-out loops {first.degeneration_rate:.1%} -> "
        f"{live.degeneration_rate:.1%} ({cut:.0%} fewer){cer}; first promotion after "
        f"{_minutes(promoted[0].seconds)}"
    )


def write_report(rounds: list[RoundRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rounds": [asdict(r) for r in rounds]}, indent=2))


def plot(rounds: list[RoundRow], path: Path, *, title: str = "loops and quality per round") -> None:
    """Degeneration rate and CER per round, on two axes, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.round for r in rounds]
    figure, loops_axis = plt.subplots(figsize=(6, 3.5), dpi=120)
    loops_axis.plot(xs, [100 * r.degeneration_rate for r in rounds], "o-", color="tab:red")
    loops_axis.set_xlabel("round")
    loops_axis.set_ylabel("held-out degeneration (%)", color="tab:red")
    loops_axis.set_xticks(xs)
    cer_axis = loops_axis.twinx()
    cer_axis.plot(xs, [r.cer or 0.0 for r in rounds], "s--", color="tab:blue")
    cer_axis.set_ylabel("CER", color="tab:blue")
    loops_axis.set_ylim(bottom=0)
    cer_axis.set_ylim(bottom=0)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)

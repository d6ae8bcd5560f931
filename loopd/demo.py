"""``loopd demo``: the whole loop, a few rounds, on the embedded default, on a CPU.

Round 0 measures the base model on the held-out prompts. Each later round samples the
live adapter, detects and stores loops, pairs them with reference answers, trains a DPO
round in a child process, gates the candidate on the held-out prompts and deploys it if
it passes. Every round's numbers are printed as a table and optionally written as JSON
and plotted. The embedded model is built once and cached; the demo's own database and
adapters start fresh each run, so round 0 is always the bare base model.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from loopd.backends import open_backend
from loopd.config import LoopdConfig
from loopd.embedded import HELDOUT_FILE, MODEL_DIRNAME, TRAIN_FILE, EmbeddedSpec, ensure_embedded
from loopd.loop import Loop, resolve_inputs
from loopd.store import Store
from loopd.train import ProgressHook
from loopd.types import EvalReport


@dataclass(frozen=True)
class DemoRound:
    round: int
    adapter: str
    degeneration_rate: float
    cer: float | None
    mean_length: float
    pairs: int
    train_seconds: float
    decision: str


def demo_config(state: Path, base: LoopdConfig | None = None) -> LoopdConfig:
    """The demo's config: its own fresh state, the cached embedded model and prompts."""
    base = base or LoopdConfig()
    embedded = state / "embedded"
    run_dir = state / "demo"
    shutil.rmtree(run_dir, ignore_errors=True)
    return base.model_copy(
        update={
            "state_dir": run_dir,
            "model": base.model.model_copy(update={"base": embedded / MODEL_DIRNAME}),
            "sampling": base.sampling.model_copy(update={"prompts": [embedded / TRAIN_FILE]}),
            "gate": base.gate.model_copy(update={"heldout": embedded / HELDOUT_FILE}),
        }
    )


def run_demo(
    cfg: LoopdConfig,
    *,
    rounds: int,
    on_round: Callable[[DemoRound], None],
    on_train_progress: ProgressHook | None = None,
) -> list[DemoRound]:
    inputs = resolve_inputs(cfg)
    backend = open_backend(cfg.serving, inputs.base_model)
    loop = Loop(cfg, inputs, backend=backend, store=Store(cfg.db_path))
    results = [_row(0, "base", loop.evaluate(None), 0, 0.0, "baseline")]
    on_round(results[0])
    for number in range(1, rounds + 1):
        loop.sample_round()
        results.append(_training_row(loop, number, on_train_progress))
        on_round(results[-1])
    loop.store.close()
    return results


def _training_row(loop: Loop, number: int, on_progress: ProgressHook | None) -> DemoRound:
    if loop.store.count_fresh_pairs() == 0:
        live = loop.deployer.live_name()
        return _row(number, live or "base", loop.evaluate(live), 0, 0.0, "skipped: no new loops")
    report = loop.training_round(on_progress)
    pairs = report.fresh_pairs + report.replay_pairs
    seconds = report.train.seconds if report.train else 0.0
    name = report.candidate.name if report.candidate else "-"
    if report.decision is None:
        live = loop.deployer.live_name()
        return _row(
            number, name, loop.evaluate(live), pairs, seconds, f"{report.status}: {report.error}"
        )
    decision = "promoted" if report.decision.promote else f"rejected: {report.decision.reason}"
    return _row(number, name, report.decision.candidate, pairs, seconds, decision)


def _row(number: int, adapter: str, report: EvalReport, pairs: int, seconds: float, decision: str):
    return DemoRound(
        round=number,
        adapter=adapter,
        degeneration_rate=report.degeneration_rate,
        cer=report.cer,
        mean_length=report.mean_length,
        pairs=pairs,
        train_seconds=seconds,
        decision=decision,
    )


def format_table(rounds: list[DemoRound]) -> str:
    header = (
        f"{'round':>5}  {'adapter':<8} {'loops':>6} {'CER':>6} {'mean len':>8}"
        f" {'pairs':>5} {'train s':>7}  decision"
    )
    lines = [header, "-" * len(header)]
    for r in rounds:
        cer = "-" if r.cer is None else f"{r.cer:.3f}"
        lines.append(
            f"{r.round:>5}  {r.adapter:<8} {r.degeneration_rate:>6.1%} {cer:>6}"
            f" {r.mean_length:>8.1f} {r.pairs:>5} {r.train_seconds:>7.1f}  {r.decision}"
        )
    return "\n".join(lines)


def write_report(rounds: list[DemoRound], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rounds": [asdict(r) for r in rounds]}, indent=2))


def plot(rounds: list[DemoRound], path: Path) -> None:
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
    figure.suptitle("loopd demo: loops and quality per round")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def build_embedded(
    state: Path, *, seed: int, progress: Callable[[int, int, float], None] | None
) -> Path:
    return ensure_embedded(state / "embedded", EmbeddedSpec(seed=seed), progress)

"""Does loopd help? One run, the same held-out prompts and seeds for every row.

    python bench/efficacy.py --model embedded --quick            # CI size, ~2 min
    python bench/efficacy.py --model smollm2 --json out.json     # real model, hours on CPU
    python bench/efficacy.py --model smollm2 --reuse state/smollm2 \
        --reuse-report REPORT.json        # score a `loopd rounds --report REPORT.json` run

Rows, all answered greedily by the same in-process engine on the held-out prompts (never
trained on) of the model's config:

- ``base``: the base model as it is;
- ``repetition_penalty 1.2`` and ``no_repeat_ngram_size 4``: the decode-time remedies;
- ``stream stop``: base answers cut where loopd's streaming watcher fires (what the
  proxy's stop mode serves: the same greedy tokens, ended at the loop);
- ``SFT-only``: TRL's SFTTrainer on the chosen answers loopd trained on, same LoRA, same
  optimizer steps (``sft_baseline.py``);
- ``loopd r1..rN``: the live adapter after each of loopd's own rounds (sample, pair,
  train, gate, deploy; ``loopd.rounds``), rejected rounds included as they leave it.

Columns (``measures.py``): degeneration by loopd's detector and by independent measures
(gzip ratio, repeated 4-grams, share at the token limit), CER and prefix-CER where
references exist, mean log-likelihood of the references, mean length in characters and
tokens, per-kind loop rates (JSON), and the control prompts' answers against the base's.
Prints a Markdown table, writes ``--json`` and a PNG plot (``--plot``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measures import (
    Answer,
    answers_of,
    controls_vs_base,
    degeneration,
    lengths,
    per_kind,
    reference_quality,
)
from sft_baseline import train_sft

from loopd import detect as detector
from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig, load_config
from loopd.demo import build_embedded, demo_config
from loopd.pair import in_completion_form
from loopd.prompts import read_prompts
from loopd.rounds import RoundRow, run_rounds
from loopd.store import Store
from loopd.train import pair_record
from loopd.types import GenerationRequest, Prompt

REPO = Path(__file__).resolve().parents[1]
QUICK_PROMPTS = 24  # held-out and training prompts per round in a --quick SmolLM2 run


@dataclass
class Row:
    name: str
    measures: dict[str, Any]
    per_kind: dict[str, float] = field(default_factory=dict)


# -- setup -------------------------------------------------------------------------------


def bench_config(args: argparse.Namespace) -> LoopdConfig:
    """The model's config with a fresh state under ``--state``; smaller with ``--quick``."""
    if args.model == "embedded":
        build_embedded(args.state, seed=0, progress=None)
        return demo_config(args.state)
    cfg = load_config(REPO / "configs" / "smollm2.toml")
    run_dir = args.state / "efficacy-smollm2"
    updates: dict[str, Any] = {"state_dir": run_dir}
    if args.smollm2:
        updates["model"] = cfg.model.model_copy(update={"base": args.smollm2.resolve()})
    shutil.rmtree(run_dir, ignore_errors=True)
    if args.quick:
        updates |= _quick(cfg, run_dir)
    return cfg.model_copy(update=updates)


def _quick(cfg: LoopdConfig, run_dir: Path) -> dict[str, Any]:
    """A few prompts of each split, shorter answers: minutes instead of hours."""
    run_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, path in (("train", cfg.sampling.prompts[0]), ("heldout", cfg.gate.heldout)):
        lines = path.read_text().splitlines()[:QUICK_PROMPTS]
        files[name] = run_dir.parent / f"quick-{name}.jsonl"
        files[name].write_text("\n".join(lines) + "\n")
    return {
        "serving": cfg.serving.model_copy(update={"max_tokens": 160}),
        "sampling": cfg.sampling.model_copy(update={"prompts": [files["train"]]}),
        "gate": cfg.gate.model_copy(update={"heldout": files["heldout"]}),
        "training": cfg.training.model_copy(update={"max_length": 448, "min_fresh_pairs": 2}),
    }


# -- rows --------------------------------------------------------------------------------


class Bench:
    """Answers the held-out prompts for each row with one engine, and scores them."""

    def __init__(self, cfg: LoopdConfig, heldout: list[Prompt]):
        self.cfg = cfg
        self.heldout = heldout
        self.engine = LocalBackend(
            cfg.model.base, batch_size=cfg.serving.batch_size, threads=cfg.serving.threads
        )
        self.base: list[Answer] = []

    def answer(self, *, adapter: str | None = None, **decode: Any) -> list[Answer]:
        requests = [
            GenerationRequest(p, max_tokens=self.cfg.serving.max_tokens, adapter=adapter, **decode)
            for p in self.heldout
        ]
        completions = [group[0] for group in self.engine.generate(requests)]
        detections = [self.detect(c.text, c.token_ids, c.finish_reason) for c in completions]
        return answers_of(self.heldout, completions, detections)

    def detect(self, text: str, token_ids, finish_reason: str):
        return detector.detect(
            text, token_ids=token_ids, finish_reason=finish_reason, config=self.cfg.detector
        )

    def row(self, name: str, answers: list[Answer], *, adapter: str | None = None) -> Row:
        base = {a.prompt.id: a.text for a in self.base or answers}
        referenced = [
            (a.prompt, in_completion_form(a.prompt.reference, base[a.prompt.id]))
            for a in answers
            if a.prompt.reference
        ]
        logprobs = self.engine.answer_logprobs(referenced, adapter=adapter) if referenced else []
        measures = (
            degeneration(answers)
            | reference_quality(answers)
            | {"ref_logprob": sum(logprobs) / len(logprobs) if logprobs else None}
            | lengths(answers)
            | controls_vs_base(answers, self.base or answers)
        )
        print(f"  {name}: loops {measures['loops']:.1%}", flush=True)
        return Row(name, measures, per_kind(answers))

    def adapter_row(self, name: str, folder: Path | None) -> Row:
        if folder is None:
            return self.row(name, self.base)
        serving = f"bench-{name.replace(' ', '-')}"
        self.engine.load_adapter(serving, folder)
        try:
            return self.row(name, self.answer(adapter=serving), adapter=serving)
        finally:
            self.engine.unload_adapter(serving)

    def stream_stopped(self) -> list[Answer]:
        """Base answers cut where the streaming watcher fires, fed text piece by piece."""
        tokenizer = self.engine.tokenizer
        stopped = []
        for answer in self.base:
            encoding = tokenizer(answer.text, add_special_tokens=False, return_offsets_mapping=True)
            watcher = detector.LoopWatcher(self.cfg.detector)
            cut, tokens = len(answer.text), answer.tokens
            for index, (start, end) in enumerate(encoding["offset_mapping"]):
                if watcher.feed(answer.text[start:end]):
                    cut, tokens = end, index + 1
                    break
            text = answer.text[:cut]
            detection = self.detect(text, None, "stop" if cut < len(answer.text) else "length")
            at_limit = answer.at_limit and cut == len(answer.text)
            stopped.append(Answer(answer.prompt, text, tokens, at_limit, detection))
        return stopped


# -- loopd's own rounds and the SFT baseline -----------------------------------------------


@dataclass
class LoopdRun:
    rounds: list[RoundRow]
    live_after: list[Path | None]  # the live adapter's folder after each round
    pairs: list[dict[str, Any]]  # what loopd trained on, as the trainer got it
    steps: int
    micro_batch: int


def run_loopd(cfg: LoopdConfig, rounds: int) -> LoopdRun:
    rows = run_rounds(cfg, rounds=rounds, on_round=lambda r: print(f"  loopd round {r.round}: "
                      f"{r.degeneration_rate:.1%} {r.decision[:100]}", flush=True))  # fmt: skip
    return finished_run(cfg.db_path, rows)


def reused_run(state_dir: Path, report: Path | None) -> LoopdRun:
    """A finished ``loopd rounds`` run on the same config: its adapters, pairs and rows.

    Training rounds on a CPU take most of a full SmolLM2 run; scoring them again from
    their store costs only the held-out answers.
    """
    rows = []
    if report is not None:
        rows = [RoundRow(**row) for row in json.loads(report.read_text())["rounds"]]
    return finished_run(state_dir / "loopd.db", rows)


def finished_run(db_path: Path, rows: list[RoundRow]) -> LoopdRun:
    """Live adapter after each round; the SFT baseline gets what the *promoted* rounds had.

    Rejected rounds never reach serving, so SFT-only is matched to the adapter loopd ends
    up serving: the same chosen answers and the same optimizer steps.
    """
    store = Store(db_path)
    live_after, live, promoted = [], None, []
    for row in sorted(store.rounds(limit=1000), key=lambda r: r["id"]):
        if row["status"] == "promoted":
            promoted.append(row)
            live = store.adapter_version(row["candidate_version"]).path
        live_after.append(live)
    records = [pair_record(p) for p in store.trained_pairs(rounds=[r["id"] for r in promoted])]
    manifests = [_manifest(store, row) for row in promoted]
    steps = sum(m.get("steps") or 0 for m in manifests)
    micro = next((m["metrics"]["micro_batch"] for m in manifests if m.get("metrics")), 1)
    store.close()
    return LoopdRun(rows, live_after, records, steps, micro)


def _manifest(store: Store, round_row: dict[str, Any]) -> dict[str, Any]:
    version = store.adapter_version(round_row["candidate_version"])
    return json.loads((version.path / "manifest.json").read_text())


# -- output ------------------------------------------------------------------------------

COLUMNS = (
    ("loops", "loops", "{:.1%}"),
    ("gzip", "gzip>2.4", "{:.1%}"),
    ("rep4", "rep-4gram", "{:.1%}"),
    ("at_limit", "at limit", "{:.1%}"),
    ("cer", "CER", "{:.3f}"),
    ("prefix_cer", "prefix-CER", "{:.3f}"),
    ("ref_logprob", "ref logprob", "{:.3f}"),
    ("mean_chars", "chars", "{:.0f}"),
    ("mean_tokens", "tokens", "{:.0f}"),
    ("control_similarity", "controls ~ base", "{:.2f}"),
    ("control_length", "controls len", "{:.2f}"),
)


def markdown(rows: list[Row]) -> str:
    header = "| row | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    lines = [header, "|---|" + "---:|" * len(COLUMNS)]
    for row in rows:
        cells = [
            "-" if row.measures[key] is None else fmt.format(row.measures[key])
            for key, _, fmt in COLUMNS
        ]
        lines.append(f"| {row.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    measures = ("loops", "gzip", "rep4", "at_limit")
    x = np.arange(len(rows))
    figure, axis = plt.subplots(figsize=(9, 4), dpi=120)
    for offset, key in enumerate(measures):
        values = [100 * r.measures[key] for r in rows]
        axis.bar(x + (offset - 1.5) * 0.2, values, 0.2, label=key)
    axis.set_xticks(x, [r.name for r in rows], rotation=25, ha="right")
    axis.set_ylabel("held-out answers (%)")
    axis.legend(title="degenerate by", fontsize=8)
    cers = [r.measures["cer"] for r in rows]
    if any(c is not None for c in cers):
        cer_axis = axis.twinx()
        cer_axis.plot(x, [c or 0 for c in cers], "ks--", label="CER")
        cer_axis.set_ylabel("CER (black)")
        cer_axis.set_ylim(bottom=0)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


# -- main --------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("embedded", "smollm2"), default="embedded")
    parser.add_argument("--smollm2", type=Path, help="SmolLM2 folder (default: the config's)")
    parser.add_argument("--quick", action="store_true", help="CI size: fewer prompts, tokens")
    parser.add_argument("--rounds", type=int, default=3, help="loopd rounds (default 3)")
    parser.add_argument("--state", type=Path, default=REPO / "state", help="state folder")
    parser.add_argument("--json", type=Path, help="write rows and loopd's round table here")
    parser.add_argument("--plot", type=Path, help="PNG (default STATE/efficacy-MODEL.png)")
    parser.add_argument(
        "--reuse",
        type=Path,
        help="state_dir of a finished `loopd rounds` "
        "run on the model's config: score its adapters, do not train again",
    )
    parser.add_argument("--reuse-report", type=Path, help="that run's --report JSON (rows)")
    args = parser.parse_args()
    started = time.monotonic()
    cfg = bench_config(args)
    heldout = read_prompts(cfg.gate.heldout)
    if args.reuse:
        print(f"loopd's rounds on {args.model}: reused from {args.reuse}", flush=True)
        run = reused_run(args.reuse, args.reuse_report)
    else:
        print(f"loopd's rounds on {args.model} ({len(heldout)} held-out prompts)", flush=True)
        run = run_loopd(cfg, args.rounds)
    bench = Bench(cfg, heldout)
    print("rows", flush=True)
    bench.base = bench.answer()
    rows = [
        bench.row("base", bench.base),
        bench.row("repetition_penalty 1.2", bench.answer(repetition_penalty=1.2)),
        bench.row("no_repeat_ngram_size 4", bench.answer(no_repeat_ngram_size=4)),
        bench.row("stream stop", bench.stream_stopped()),
    ]
    sft_dir = cfg.state_dir / "sft-baseline"
    if run.pairs and run.steps:
        train_sft(run.pairs, model_dir=cfg.model.base, out_dir=sft_dir, cfg=cfg.training,
                  steps=run.steps, micro_batch=run.micro_batch)  # fmt: skip
        rows.append(bench.adapter_row(f"SFT-only ({run.steps} steps)", sft_dir))
    scored: dict[Path | None, Row] = {}
    for number, folder in enumerate(run.live_after, start=1):
        name = f"loopd r{number}"
        if folder in scored:  # a rejected round leaves the same adapter serving
            rows.append(Row(name, scored[folder].measures, scored[folder].per_kind))
            continue
        scored[folder] = bench.adapter_row(name, folder)
        rows.append(scored[folder])
    table = markdown(rows)
    print("\n" + table)
    elapsed = time.monotonic() - started
    print(f"\n{args.model}: {len(heldout)} held-out prompts, {elapsed / 60:.0f} min")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": args.model, "quick": args.quick, "heldout": len(heldout),
            "minutes": elapsed / 60, "sft_steps": run.steps,
            "rows": [asdict(r) for r in rows], "loopd_rounds": [asdict(r) for r in run.rounds],
        }, indent=2))  # fmt: skip
    plot_path = args.plot or args.state / f"efficacy-{args.model}.png"
    plot(rows, plot_path, f"loopd efficacy on {args.model}: held-out degeneration")
    print(f"plot: {plot_path}")


if __name__ == "__main__":
    main()

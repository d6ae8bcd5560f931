"""A loopd training round against a bare TRL script: same pairs, model and settings.

    python bench/train.py                                  # the embedded model
    python bench/train.py --repeats 3 --json bench/results/train.json
    python bench/train.py --config configs/smollm2.toml --pairs 16 --micro-batch 2

The pairs are made the way loopd makes them: the model answers its train prompts through
loopd's own stages (``Loop.sample_round`` into a throw-away store), and the newest
``--pairs`` fresh pairs are taken. Both variants then train one round on them, alternating
(loopd, bare, loopd, bare, ...), so drift on a shared machine hits both alike:

- **loopd**: ``loopd.train.run_round`` as the daemon calls it (the child process, its
  memory plan and budget, progress relayed as JSON lines, the adapter saved);
- **bare TRL**: this file run as ``--bare-child JOB.json``: the same base model, LoRA,
  ``DPOConfig`` values, seed and threads, the same token ids (``encode_pairs``), and a
  ``DPOTrainer`` told not to tokenize again, as loopd's is; nothing else.

Each round is split into phases on one clock: **child start** (interpreter, imports,
tokenizing, model load, until the trainer is built), **train** (building the trainer and
``trainer.train()``: what ``TrainResult.seconds`` times inside loopd's child; steps/s is
steps over it, reference log-probs included), and
**save + exit** (the adapter written, the child gone, the parent holding the result).
loopd's overhead is the difference of the phases after child start, as a share of
loopd's round; the child start difference is reported on its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30
TARGET = 0.10  # issue 12: loopd's overhead at most 10% of the round (child start excluded)


# --- the bare TRL script (a child process; imports only what it uses) ----------------


def bare_child(job_path: Path) -> None:
    """Train the job's pairs with TRL and PEFT directly; write timestamps and counts."""
    t_main = time.time()
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from loopd.backends.dpo_data import encode_pairs
    from loopd.prompts import end_token_ids

    t_imported = time.time()
    job = json.loads(job_path.read_text())
    cfg, base = job["training"], job["base_model"]
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoded = encode_pairs(
        job["pairs"],
        tokenizer,
        end_token_id=end_token_ids(tokenizer, Path(base))[0],
        max_length=cfg["max_length"],
        max_loop_tokens=cfg["max_loop_tokens"],
    )
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    lora = LoraConfig(
        r=cfg["lora_rank"],
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=cfg["lora_dropout"],
        target_modules=cfg["target_modules"],
        task_type="CAUSAL_LM",
    )

    class Pretokenized(DPOTrainer):  # rows are ids already
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    t_loaded = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        args = DPOConfig(
            output_dir=scratch,
            learning_rate=cfg["learning_rate"],
            num_train_epochs=cfg["epochs"],
            per_device_train_batch_size=job["micro_batch"],
            gradient_accumulation_steps=job["accumulation"],
            precompute_ref_batch_size=job["micro_batch"],
            beta=cfg["beta"],
            loss_type=cfg["loss_type"],
            max_length=cfg["max_length"],
            precompute_ref_log_probs=True,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=not torch.cuda.is_available(),
            seed=cfg["seed"],
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = Pretokenized(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(encoded.rows),
            processing_class=tokenizer,
            peft_config=lora,
        )
        output = trainer.train()
    t_trained = time.time()
    trainer.model.save_pretrained(job["out_dir"], selected_adapters=["default"])
    t_saved = time.time()
    result = {
        "stamps": {
            "main": t_main,
            "imported": t_imported,
            "loaded": t_loaded,
            "trained": t_trained,
            "saved": t_saved,
        },
        "pairs_used": len(encoded.rows),
        "seq_len": encoded.longest,
        "steps": output.global_step,
        "final_loss": output.training_loss,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB,
    }
    Path(job["result_path"]).write_text(json.dumps(result))


def run_bare(job: dict[str, Any], scratch: Path, env: dict[str, str]) -> dict[str, Any]:
    job = job | {"out_dir": str(scratch / "out"), "result_path": str(scratch / "result.json")}
    job_path = scratch / "job.json"
    job_path.write_text(json.dumps(job))
    command = [sys.executable, str(Path(__file__).resolve()), "--bare-child", str(job_path)]
    log = scratch / "child.log"
    t0 = time.time()
    with log.open("w") as out:
        code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if code != 0:
        raise SystemExit(f"bare TRL child failed ({code}):\n{log.read_text()[-4000:]}")
    result = json.loads(Path(job["result_path"]).read_text())
    wall = time.time() - t0
    stamps = result.pop("stamps")
    start = stamps["loaded"] - t0
    train = stamps["trained"] - stamps["loaded"]
    return result | {
        "variant": "bare TRL",
        "wall_s": wall,
        "child_start_s": start,
        "train_s": train,
        "tail_s": wall - start - train,
        "interpreter_s": stamps["main"] - t0,
        "imports_s": stamps["imported"] - stamps["main"],
        "save_s": stamps["saved"] - stamps["trained"],
    }


# --- loopd's round ------------------------------------------------------------------


def run_loopd(pairs, base: Path, cfg, scratch: Path) -> dict[str, Any]:
    from loopd.train import run_round

    events: list[float] = []
    t0 = time.time()
    result = run_round(
        pairs,
        base_model=base,
        init_adapter=None,
        out_dir=scratch / "out",
        cfg=cfg,
        on_progress=lambda step, total, loss: events.append(time.time()),
    )
    wall = time.time() - t0
    # The last progress line is TRL's summary log at the end of train(); the child emits
    # it and the parent's reader thread stamps it within milliseconds. train() began
    # TrainResult.seconds before that.
    trained = events[-1] - t0
    return {
        "variant": "loopd",
        "wall_s": wall,
        "child_start_s": trained - result.seconds,
        "train_s": result.seconds,
        "tail_s": wall - trained,
        "pairs_used": result.pairs_used,
        "seq_len": result.metrics.get("seq_len"),
        "steps": result.steps,
        "final_loss": result.final_loss,
        "peak_rss_gib": result.metrics.get("peak_memory_gb"),
        "micro_batch": result.metrics.get("micro_batch"),
        "accumulation": result.metrics.get("accumulation"),
        "progress_events": len(events),
    }


# --- pairs, made by loopd's own stages ----------------------------------------------


def embedded_root() -> Path:
    """The embedded build: the usual ``state/embedded``, else the test suite's cached one
    (byte-identical; DESIGN), else built into ``state/embedded`` (about half a minute)."""
    cached = REPO / ".pytest_cache" / "d" / "loopd-embedded" / "embedded"
    usual = REPO / "state" / "embedded"
    return cached if not usual.exists() and cached.exists() else usual


def make_config(args: argparse.Namespace, state: Path):
    from loopd.config import LoopdConfig, load_config

    cfg = load_config(args.config) if args.config else LoopdConfig()
    update: dict[str, Any] = {"state_dir": state}
    if args.model:
        update["model"] = cfg.model.model_copy(update={"base": args.model.resolve()})
    if args.prompts:
        prompts = [args.prompts.resolve()]
        update["sampling"] = cfg.sampling.model_copy(update={"prompts": prompts})
    training: dict[str, Any] = {"timeout_seconds": 24 * 3600.0}
    if args.threads is not None:
        training["threads"] = args.threads
    micro = args.micro_batch or cfg.training.micro_batch_size or cfg.training.batch_size
    training["micro_batch_size"] = micro  # fixed, so the bare script can use the same
    update["training"] = cfg.training.model_copy(update=training)
    return cfg.model_copy(update=update)


def sample_pairs(cfg, count: int, console) -> tuple[Path, list]:
    """The newest ``count`` fresh pairs after as many sampling rounds as it takes."""
    from loopd.backends.local import LocalBackend
    from loopd.embedded import HELDOUT_FILE, MODEL_DIRNAME, TRAIN_FILE, ensure_embedded
    from loopd.inputs import Inputs
    from loopd.loop import Loop
    from loopd.prompts import read_prompts
    from loopd.store import Store

    if cfg.model.base is None:
        root = ensure_embedded(embedded_root())
        base, train_files = root / MODEL_DIRNAME, [root / TRAIN_FILE]
        heldout = read_prompts(root / HELDOUT_FILE)
    else:
        base, train_files = cfg.model.base, cfg.sampling.prompts
        heldout = read_prompts(cfg.gate.heldout) if cfg.gate.heldout else []
    if not train_files:
        raise SystemExit("--model needs --prompts (or a --config naming sampling.prompts)")
    prompts = [p for path in train_files for p in read_prompts(path)]
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    serving = cfg.serving
    backend = LocalBackend(base, batch_size=serving.batch_size, threads=serving.threads)
    store = Store(cfg.db_path)
    loop = Loop(cfg, Inputs(base, prompts, heldout), backend=backend, store=store)
    started = time.perf_counter()
    for _ in range(20):
        report = loop.sample_round()
        console.print(f"sampled {report.samples}: {report.degenerate} loops, {report.pairs} pairs")
        if store.count_fresh_pairs() >= count:
            break
    pairs = store.fresh_pairs(count)
    console.print(f"{len(pairs)} pairs in {time.perf_counter() - started:.0f} s")
    store.close()
    return base, pairs


# --- the table ----------------------------------------------------------------------


def spread(values: list[float], digits: int = 1) -> str:
    middle = statistics.median(values)
    if len(values) == 1:
        return f"{middle:.{digits}f}"
    return f"{middle:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    loopd = [r for r in runs if r["variant"] == "loopd"]
    bare = [r for r in runs if r["variant"] == "bare TRL"]
    after = lambda r: r["wall_s"] - r["child_start_s"]  # noqa: E731
    pairs = list(zip(loopd, bare, strict=False))
    diffs = [after(a) - after(b) for a, b in pairs]
    share = [d / a["wall_s"] for d, (a, _) in zip(diffs, pairs, strict=True)]
    share_after = [d / after(a) for d, (a, _) in zip(diffs, pairs, strict=True)]
    median = statistics.median
    return {
        "overhead_s": median(diffs),
        "overhead_share_of_round": median(share),
        "overhead_share_of_round_after_start": median(share_after),
        "overhead_share_range": [min(share), max(share)],
        "train_diff_s": median([a["train_s"] - b["train_s"] for a, b in pairs]),
        "tail_diff_s": median([a["tail_s"] - b["tail_s"] for a, b in pairs]),
        "child_start_diff_s": median([a["child_start_s"] - b["child_start_s"] for a, b in pairs]),
        "target": TARGET,
        "meets_target": median(share) <= TARGET,
    }


def print_table(console, runs: list[dict[str, Any]], summary: dict[str, Any], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    columns = ("variant", "wall s", "child start s", "train s", "save + exit s", "steps")
    for column in (*columns, "steps/s", "peak RSS GiB", "final loss"):
        table.add_column(column, justify="right")
    for variant in ("loopd", "bare TRL"):
        rows = [r for r in runs if r["variant"] == variant]
        pick = lambda key, rows=rows: [r[key] for r in rows]  # noqa: E731
        table.add_row(
            variant,
            spread(pick("wall_s")),
            spread(pick("child_start_s")),
            spread(pick("train_s")),
            spread(pick("tail_s"), 2),
            f"{statistics.median(pick('steps')):g}",
            spread([r["steps"] / r["train_s"] for r in rows], 2),
            spread(pick("peak_rss_gib"), 2),
            f"{statistics.median(pick('final_loss')):.4f}",
        )
    console.print(table)
    console.print("median (min–max) over the repeats")
    s = summary
    verdict = "meets" if s["meets_target"] else "MISSES"
    low, high = s["overhead_share_range"]
    console.print(
        f"loopd overhead after child start (paired, loopd − bare): {s['overhead_s']:+.2f} s = "
        f"{s['overhead_share_of_round']:+.1%} of loopd's round wall ({low:+.1%} to {high:+.1%}; "
        f"{s['overhead_share_of_round_after_start']:+.1%} of the round after child start) — "
        f"train {s['train_diff_s']:+.2f} s, save + exit {s['tail_diff_s']:+.2f} s; "
        f"{verdict} the ≤ {TARGET:.0%} target"
    )
    console.print(f"child start difference (loopd − bare): {s['child_start_diff_s']:+.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bare-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help="a loopd config (default: embedded)")
    parser.add_argument("--model", type=Path, help="a base model folder (needs --prompts)")
    parser.add_argument("--prompts", type=Path, help="train prompts (JSON Lines)")
    parser.add_argument("--pairs", type=int, default=64, help="pairs per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per variant (ABAB)")
    parser.add_argument("--micro-batch", type=int, help="pairs per pass (default batch_size)")
    parser.add_argument("--threads", type=int, help="trainer torch threads (default config)")
    parser.add_argument(
        "--bare-malloc",
        action="store_true",
        help="give the bare child loopd's allocator setting (MALLOC_MMAP_THRESHOLD_) too",
    )
    parser.add_argument("--json", type=Path, help="write every run here")
    args = parser.parse_args()
    if args.bare_child:
        bare_child(args.bare_child)
        return

    from rich.console import Console

    from loopd import train as loopd_train
    from loopd.train import pair_record

    console = Console(width=150)  # the spreads make wide cells; keep them on one line
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        scratch = Path(tmp)
        cfg = make_config(args, scratch / "state")
        base, pairs = sample_pairs(cfg, args.pairs, console)
        training = cfg.training
        job = {
            "base_model": str(base),
            "pairs": [pair_record(p) for p in pairs],
            "training": training.model_dump(mode="json"),
            "micro_batch": training.micro_batch_size,
            "accumulation": training.batch_size // training.micro_batch_size,
        }
        env = dict(os.environ)
        if args.bare_malloc:
            env |= getattr(loopd_train, "TRAINER_ENVIRONMENT", {})
        # warm the page cache for both: the first child would otherwise pay the disk
        subprocess.run([sys.executable, "-c", "import trl, peft, transformers"], check=True)
        runs = []
        for repeat in range(args.repeats):
            for variant in ("loopd", "bare TRL"):
                folder = scratch / f"{repeat}-{variant.split()[0]}"
                folder.mkdir()
                if variant == "loopd":
                    run = run_loopd(pairs, base, training, folder)
                else:
                    run = run_bare(job, folder, env)
                run["repeat"] = repeat
                runs.append(run)
                console.print(
                    f"{variant}: {run['wall_s']:.1f} s (start {run['child_start_s']:.1f}, "
                    f"train {run['train_s']:.1f}), {run['steps']} steps, "
                    f"loss {run['final_loss']:.4f}, {run['peak_rss_gib']:.2f} GiB"
                )
    same = ("pairs_used", "seq_len", "steps")
    if len({tuple(r[k] for k in same) for r in runs}) > 1:  # not the same work: say so
        console.print(f"[red]the variants differ in {same}: {[[r[k] for k in same] for r in runs]}")
    loopd_plan = {(r["micro_batch"], r["accumulation"]) for r in runs if r["variant"] == "loopd"}
    if loopd_plan != {(job["micro_batch"], job["accumulation"])}:
        console.print(f"[red]loopd batched {loopd_plan}, the bare script {job['micro_batch']}")
    summary = summarize(runs)
    name = "embedded" if cfg.model.base is None else base.name
    title = (
        f"one DPO round: {len(pairs)} pairs, {name} model, batch {training.batch_size} "
        f"(micro {job['micro_batch']} × {job['accumulation']}), {training.epochs:g} epochs, "
        f"{training.threads} threads"
    )
    print_table(console, runs, summary, title)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "command": " ".join(["python", *sys.argv]),
            "model": str(base),
            "pairs": len(pairs),
            "training": job["training"] | {"micro_batch": job["micro_batch"]},
            "bare_malloc": args.bare_malloc,
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "summary": summary,
            "runs": runs,
        }
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()

"""Peak memory of a real DPO step against loopd's estimate (``loopd.memory``).

Each row runs one real round through ``loopd.train.run_round`` (the trainer child, TRL
DPO, PEFT LoRA) on synthetic pairs whose prompt + answers fill ``seq_len`` tokens, with
the micro-batch fixed, and reads the child's peak resident memory. The estimate must stay
above the measured peak (it plans; an estimate below reality costs a retry) without being
so loose that it wastes the budget.

    python bench/train_memory.py                         # embedded model only
    python bench/train_memory.py --smollm2 models/smollm2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loopd.config import TrainingConfig
from loopd.embedded import WORDS, ensure_embedded
from loopd.memory import GIB, ModelShape, estimate_peak_bytes
from loopd.train import run_round
from loopd.types import Pair, Prompt

EMBEDDED_ROWS = ((4, 128), (8, 256))
SMOLLM2_ROWS = ((1, 256), (2, 256), (1, 640), (2, 640), (4, 640))


def synthetic_pairs(count: int, seq_len: int, seed: int = 0) -> list[Pair]:
    """Word soup about ``seq_len`` tokens long (prompt + rejected) on the embedded model;
    BPE splits some of its words, so the measured length is reported, not assumed."""
    rng = random.Random(seed)
    words = lambda n: " " + " ".join(rng.choices(WORDS, k=n))  # noqa: E731
    prompt_words, answer_words = seq_len // 8, seq_len * 3 // 4
    return [
        Pair(
            prompt=Prompt(id=f"m{i}", text="doc:" + words(prompt_words)),
            chosen=words(answer_words // 2),
            rejected=words(answer_words),
            chosen_source="reference",
            sample_id=i,
        )
        for i in range(count)
    ]


def measure(model: Path, micro: int, seq_len: int) -> dict:
    cfg = TrainingConfig(
        batch_size=micro, micro_batch_size=micro, epochs=1, max_length=seq_len, threads=2
    )
    with tempfile.TemporaryDirectory() as scratch:
        result = run_round(
            synthetic_pairs(micro, seq_len),
            base_model=model,
            init_adapter=None,
            out_dir=Path(scratch) / "out",
            cfg=cfg,
        )
    shape = ModelShape.from_folder(model)
    longest = result.metrics["seq_len"]  # the tokens the trainer really saw
    estimate = estimate_peak_bytes(shape, micro_batch=micro, seq_len=longest) / GIB
    measured = result.metrics["peak_memory_gb"]
    return {
        "model": model.name,
        "micro_batch": micro,
        "seq_len": longest,
        "measured_gb": measured,
        "estimate_gb": round(estimate, 2),
        "estimate_over_measured": round(estimate / measured, 2),
        "step_seconds": round(result.seconds / max(1, result.steps), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, default=Path("state"))
    parser.add_argument("--smollm2", type=Path, help="SmolLM2 folder (loopd model smollm2)")
    parser.add_argument("--json", type=Path, help="write the rows here")
    parser.add_argument("--rows", help="SmolLM2 rows as micro:seq_len,... (default: a sweep)")
    args = parser.parse_args()
    runs = [(ensure_embedded(args.state / "embedded") / "model", EMBEDDED_ROWS)]
    if args.smollm2:
        sizes = SMOLLM2_ROWS
        if args.rows:
            sizes = tuple(tuple(map(int, r.split(":"))) for r in args.rows.split(","))
        runs.append((args.smollm2, sizes))
    rows = [measure(model, micro, seq) for model, sizes in runs for micro, seq in sizes]
    table = Table(title="DPO step: measured peak vs loopd's estimate")
    for column in rows[0]:
        table.add_column(column.replace("_", " "), justify="right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=2))


if __name__ == "__main__":
    main()

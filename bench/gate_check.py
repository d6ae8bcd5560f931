"""The gate's verdict, check by check, on a finished ``loopd rounds`` state.

    python bench/gate_check.py --config configs/smollm2.toml --state STATE_DIR \
        --candidate 1 [--live 0] [--json PATH]

Answers the config's held-out prompts with the live version (0: the base model) and the
candidate, scores the live adapter's clean answers under both, and prints every check
of ``loopd.gate`` with its interval: how the statistical gate judges adapters a real run
produced (the defaults of ``max_likelihood_drop`` and friends were set from this).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loopd.backends.local import LocalBackend
from loopd.config import load_config
from loopd.gate import gate
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--state", type=Path, required=True, help="state_dir of the run")
    parser.add_argument("--model", type=Path, help="model folder (default: the config's)")
    parser.add_argument("--candidate", type=int, required=True, help="adapter version")
    parser.add_argument("--live", type=int, default=0, help="live version (0: base model)")
    parser.add_argument("--json", type=Path, help="write the checks here")
    args = parser.parse_args()
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp())
    shutil.copy(args.state / "loopd.db", scratch / "loopd.db")  # never touch the run's state
    cfg = load_config(args.config)
    model = cfg.model.model_copy(update={"base": args.model.resolve()}) if args.model else cfg.model
    cfg = cfg.model_copy(update={"state_dir": scratch, "model": model})
    inputs = resolve_inputs(cfg)
    backend = LocalBackend(inputs.base_model, batch_size=cfg.serving.batch_size,
                           threads=cfg.serving.threads)  # fmt: skip
    store = Store(scratch / "loopd.db")
    loop = Loop(cfg, inputs, backend=backend, store=store)
    names = {}
    for number in {args.candidate, args.live} - {0}:
        version = store.adapter_version(number)
        names[number] = f"check-{version.name}"
        backend.load_adapter(names[number], args.state / "adapters" / version.name)
    live, candidate = names.get(args.live), names[args.candidate]
    print(f"held-out answers of {live or 'base'} and {candidate}", flush=True)
    decision = gate(
        loop.evaluate(candidate),
        loop.evaluate(live),
        cfg.gate,
        loop.heldout.likelihood(live, candidate),
    )
    table = Table("check", "passed", "estimate", "interval", "bar", "detail")
    for check in decision.checks:
        interval = "" if check.interval is None else "[{:.3f}, {:.3f}]".format(*check.interval)
        estimate = "" if check.estimate is None else f"{check.estimate:.3f}"
        table.add_row(check.name, str(check.passed), estimate, interval, check.bar, check.detail)
    Console(width=200).print(table)
    print(f"promote: {decision.promote}  ({(time.monotonic() - started) / 60:.0f} min)")
    if args.json:
        args.json.write_text(json.dumps({
            "promote": decision.promote, "reason": decision.reason,
            "checks": [asdict(c) for c in decision.checks],
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()

"""Reliability of loopd: kill -9 anywhere and injected faults, nothing lost, no bad deploy.

One row per scenario: how many runs, faults injected, recoveries, samples lost (must be
0) and bad deployments (must be 0); the details (kills by stage, what was quarantined,
the errors seen) go in ``--json``.

- ``kill -9 anywhere`` (``crash.py``): the real daemon killed ``--kills`` times at crash
  points and random moments of every stage, restarted and checked after each kill;
- the faults of ``faults.py``: trainer crashing, hanging and out of memory; a corrupted
  adapter; the database locked by another process; the disk full;
- a soak (``soak.py``, ``--soak-seconds``): the daemon accelerated for many rounds, its
  memory, open files, threads and database size read as it runs (a second table).

Run:  python bench/reliability.py                       # 50 kills and every fault
      python bench/reliability.py --kills 200 --json build/reliability.json
      python bench/reliability.py --only soak --soak-seconds 3600
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

import crash
import faults
import soak

from loopd.embedded import EmbeddedSpec, ensure_embedded


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs of the daemon")
    parser.add_argument("--only", choices=["crash", "faults", "soak"], help="one part only")
    parser.add_argument("--soak-seconds", type=float, default=600.0)
    parser.add_argument("--fault", action="append", choices=list(faults.SCENARIOS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the runs' state here")
    parser.add_argument("--embedded", type=Path, help="a built embedded folder to reuse")
    parser.add_argument("--json", type=Path, help="write the rows here as JSON")
    return parser.parse_args()


def measure(
    args: argparse.Namespace, workdir: Path, console: Console
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    embedded = args.embedded or ensure_embedded(workdir / "embedded", EmbeddedSpec())
    rows = []
    if args.only in (None, "crash"):
        report = crash.run_crash(
            kills=args.kills,
            workdir=workdir / "crash",
            embedded=embedded,
            seed=args.seed,
            on_kill=lambda n, stage: console.log(f"kill {n}/{args.kills}: {stage}"),
        )
        rows.append(report.row())
    if args.only in (None, "faults"):
        for name in args.fault or list(faults.SCENARIOS):
            console.log(f"fault: {name}")
            [row] = faults.run_faults(workdir / "faults", embedded, [name])
            rows.append(asdict(row))
    if args.only not in (None, "soak"):
        return rows, None
    report = soak.run_soak(
        seconds=args.soak_seconds,
        workdir=workdir / "soak",
        embedded=embedded,
        on_reading=lambda r: console.log(f"soak {r.at:.0f}s: rss {r.rss_mb:.0f} MB"),
    )
    return rows, report.summary()


def soak_table(summary: dict[str, Any]) -> Table:
    title = (
        f"soak: {summary['seconds']:.0f} s, {summary['rounds']} rounds, "
        f"{summary['rollbacks']} rollbacks"
    )
    out = Table(title=title)
    for column in ("measure", "first", "last", "peak", "growth per hour"):
        out.add_column(column, justify="left" if column == "measure" else "right")
    for name in ("rss_mb", "open_files", "threads", "db_mb"):
        figures = summary[name]
        out.add_row(name, *(f"{figures[k]:g}" for k in ("first", "last", "peak", "per_hour")))
    return out


def table(rows: list[dict[str, Any]]) -> Table:
    out = Table(title="loopd under kill -9 and injected faults")
    for column in ("scenario", "runs", "faults", "recovered", "samples lost", "bad deploys"):
        out.add_column(column, justify="left" if column == "scenario" else "right")
    for row in rows:
        out.add_row(
            row["scenario"],
            str(row["runs"]),
            str(row["faults"]),
            str(row["recovered"]),
            str(row["samples_lost"]),
            str(row["bad_deployments"]),
        )
    return out


def main() -> int:
    args = parse_args()
    console = Console(stderr=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="loopd-reliability-") as scratch:
        workdir = args.workdir or Path(scratch)
        rows, soaked = measure(args, workdir, console)
    if rows:
        Console().print(table(rows))
    if soaked:
        Console().print(soak_table(soaked))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        seconds = round(time.monotonic() - started, 1)
        document = {"rows": rows, "soak": soaked, "seconds": seconds}
        args.json.write_text(json.dumps(document, indent=2, default=str))
    broken = [r for r in rows if r["samples_lost"] or r["bad_deployments"]]
    violations = [v for r in rows for v in r.get("detail", {}).get("violations", [])]
    return 1 if broken or violations else 0


if __name__ == "__main__":
    sys.exit(main())

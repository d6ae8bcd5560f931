"""``loopd rounds --config FILE``: run training rounds in the foreground on your model.

The daemon's loop, driven round after round with a table as it goes: round 0 measures
the live adapter on the held-out prompts, each later round samples, pairs, trains, gates
and deploys. It works in the config's ``state_dir`` (the same database and adapters as
``loopd run``; do not run both on one state at once) and continues from what is live.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loopd import logs
from loopd.cli.progress import progress_bar
from loopd.config import ConfigError, LoopdConfig, load_config
from loopd.rounds import format_table, plot, run_rounds, summary, write_report

log = logging.getLogger("loopd.cli")


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("rounds", help=summary)
    parser.add_argument("--config", type=Path, required=True, help="TOML or YAML config file")
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rounds", type=int, default=3, help="training rounds (default 3)")
    parser.add_argument("--report", type=Path, help="write the per-round figures as JSON here")
    parser.add_argument(
        "--plot", type=Path, help="PNG plot of loops and CER per round (default: STATE/rounds.png)"
    )


def run(args: argparse.Namespace) -> int:
    logs.configure("text", level=logging.WARNING)
    logging.getLogger("loopd.progress").setLevel(logging.INFO)
    try:
        cfg = load_config(args.config)
    except ConfigError as error:
        print(f"loopd rounds: {error}")
        return 1
    for note in cfg.advice():
        print(f"advice: {note}")
    return rounds_with_report(cfg, args, plot_path=args.plot or cfg.state_dir / "rounds.png")


def rounds_with_report(cfg: LoopdConfig, args: argparse.Namespace, *, plot_path: Path) -> int:
    """Run ``args.rounds`` rounds, printing each row as it lands, then the whole table."""
    update, close = progress_bar("training")
    try:
        rows = run_rounds(
            cfg,
            rounds=args.rounds,
            on_round=lambda r: (close(), print(format_table([r]).splitlines()[-1], flush=True)),
            on_train_progress=update,
        )
    except (OSError, ValueError) as error:  # a missing or malformed prompt file, a bad model
        print(f"loopd {args.command}: {error}")
        return 1
    print("\n" + format_table(rows))
    print("\n" + summary(rows))
    if args.report:
        write_report(rows, args.report)
        print(f"report: {args.report}")
    plot(rows, plot_path, title=f"loopd {args.command}: loops and quality per round")
    print(f"plot:   {plot_path}")
    return 0

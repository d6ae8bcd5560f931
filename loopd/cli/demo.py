"""``loopd demo``: run the whole loop for a few rounds on the embedded default."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loopd import logs
from loopd.cli.progress import progress_bar
from loopd.cli.rounds import add_output_arguments, rounds_with_report
from loopd.config import LoopdConfig
from loopd.demo import build_embedded, demo_config


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("demo", help=summary)
    parser.add_argument("--state", type=Path, default=Path("state"), help="state folder")
    parser.add_argument("--config", type=Path, help=argparse.SUPPRESS)  # see run()
    add_output_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config is not None:  # the demo is the embedded default, and only that
        print(
            f"loopd demo: runs the embedded default only; for {args.config} run\n"
            f"  loopd rounds --config {args.config}"
        )
        return 2
    logs.configure("text", level=logging.WARNING)
    logging.getLogger("loopd.progress").setLevel(logging.INFO)
    update, close = progress_bar("building the embedded model")
    build_embedded(args.state, seed=0, progress=update)
    close()
    cfg = demo_config(args.state, LoopdConfig())
    return rounds_with_report(cfg, args, plot_path=args.plot or args.state / "demo.png")

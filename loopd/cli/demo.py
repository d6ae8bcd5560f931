"""``loopd demo``: run the whole loop for a few rounds on the embedded default."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loopd import logs
from loopd.cli.progress import progress_bar
from loopd.config import ConfigError, LoopdConfig, load_config
from loopd.demo import build_embedded, demo_config, format_table, plot, run_demo, write_report


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="find loops in the embedded tiny model and train them away (CPU, offline)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="training rounds (default 3)")
    parser.add_argument("--state", type=Path, default=Path("state"), help="state folder")
    parser.add_argument("--config", type=Path, help="config to start from (default: built-in)")
    parser.add_argument("--report", type=Path, help="write the per-round figures as JSON here")
    parser.add_argument(
        "--plot", type=Path, help="PNG plot of loops and CER per round (default: STATE/demo.png)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logs.configure("text", level=logging.WARNING)
    logging.getLogger("loopd.progress").setLevel(logging.INFO)
    try:
        base = load_config(args.config) if args.config else LoopdConfig()
    except ConfigError as error:
        print(f"loopd demo: {error}")
        return 1
    update, close = progress_bar("building the embedded model")
    build_embedded(args.state, seed=base.model.embedded_seed, progress=update)
    close()
    cfg = demo_config(args.state, base)
    train_update, train_close = progress_bar("training")
    rounds = run_demo(
        cfg,
        rounds=args.rounds,
        on_round=lambda r: (train_close(), print(format_table([r]).splitlines()[-1], flush=True)),
        on_train_progress=train_update,
    )
    print("\n" + format_table(rounds))
    _summary(rounds)
    if args.report:
        write_report(rounds, args.report)
        print(f"report: {args.report}")
    plot_path = args.plot or args.state / "demo.png"
    plot(rounds, plot_path)
    print(f"plot:   {plot_path}")
    return 0


def _summary(rounds) -> None:
    first = rounds[0]
    promoted = [r for r in rounds[1:] if r.decision == "promoted"]
    if not promoted or first.degeneration_rate == 0:
        print("\nno adapter was promoted; the base model still serves")
        return
    live = promoted[-1]
    cut = 1 - live.degeneration_rate / first.degeneration_rate
    print(
        f"\nlive adapter {live.adapter}: held-out loops {first.degeneration_rate:.1%} -> "
        f"{live.degeneration_rate:.1%} ({cut:.0%} fewer), CER {first.cer:.3f} -> {live.cer:.3f}"
    )

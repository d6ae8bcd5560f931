"""``loopd config check FILE``: validate a config without starting anything."""

from __future__ import annotations

import argparse
from pathlib import Path

from loopd.config import ConfigError, load_config


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("config", help=summary)
    actions = parser.add_subparsers(dest="action", required=True)
    check = actions.add_parser("check", help="validate FILE; print each problem and its fix")
    check.add_argument("file", type=Path)
    check.set_defaults(func=check_file)


def check_file(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.file)
    except ConfigError as error:
        print(f"{args.file}: invalid")
        for problem in error.problems:
            print(f"  {problem}")
        return 1
    print(f"{args.file}: ok (state_dir={cfg.state_dir}, serving={cfg.serving.backend})")
    for note in cfg.advice():
        print(f"  advice: {note}")
    return 0

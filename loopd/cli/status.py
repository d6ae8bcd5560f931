"""``loopd status``: what the loop has done, read from its database."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from loopd.config import ConfigError, load_config
from loopd.status import render, snapshot
from loopd.store import Store


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="live adapter, counts, recent rounds")
    parser.add_argument("--config", type=Path, required=True, help="the daemon's config file")
    parser.add_argument("--json", action="store_true", help="print the full status as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as error:
        print(f"loopd status: {error}")
        return 1
    if not cfg.db_path.exists():
        print(f"loopd status: no database at {cfg.db_path}; has `loopd run` been started?")
        return 1
    status = snapshot(Store(cfg.db_path))
    print(json.dumps(status, indent=2, default=str) if args.json else render(status))
    return 0

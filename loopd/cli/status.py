"""``loopd status``: what the loop is doing — from the running daemon, else its database.

With a daemon running on the config's state (found through ``STATE/daemon.json``) the
status is its ``/status``, which adds the jobs' next runs, a pause and the config
generation; with none, the database alone tells the rest (WAL lets it read while a
daemon writes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from loopd.config import ConfigError, LoopdConfig, load_config
from loopd.status import render, snapshot
from loopd.store import Store


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("status", help=summary)
    parser.add_argument("--config", type=Path, required=True, help="the daemon's config file")
    parser.add_argument("--json", action="store_true", help="print the /status document")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as error:
        print(f"loopd status: {error}")
        return 1
    status = _from_daemon(cfg)
    if status is None:
        if not cfg.db_path.exists():
            print(f"loopd status: no database at {cfg.db_path}; has `loopd run` been started?")
            return 1
        status = snapshot(Store(cfg.db_path))
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        Console(width=160 if not Console().is_terminal else None).print(render(status))
    return 0


def _from_daemon(cfg: LoopdConfig) -> dict[str, Any] | None:
    """The running daemon's ``/status``, or None when none answers on this state."""
    address_file = cfg.state_dir / "daemon.json"
    if not address_file.is_file():
        return None
    address = json.loads(address_file.read_text())
    try:
        response = httpx.get(f"http://{address['host']}:{address['port']}/status", timeout=30)
        response.raise_for_status()
    except httpx.HTTPError:
        return None  # a stale address file (the daemon died), or a daemon in trouble
    return response.json()

"""``loopd run --config FILE``: the long-running daemon."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from loopd import logs
from loopd.backends import open_backend
from loopd.cli.progress import progress_bar
from loopd.config import ConfigError, load_config
from loopd.daemon import Daemon
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.metrics import Metrics
from loopd.store import Store

log = logging.getLogger("loopd.cli")


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("run", help=summary)
    parser.add_argument("--config", type=Path, required=True, help="TOML or YAML config file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as error:
        logs.configure("text")
        log.error("bad config", extra={"problems": error.problems})
        return 1
    logs.configure(cfg.daemon.log_format)
    update, close = progress_bar("building the embedded model")
    try:
        inputs = resolve_inputs(cfg, update)
    except (OSError, ValueError) as error:  # a missing or malformed prompt file
        log.error("cannot read the loop's inputs", extra={"error": str(error)})
        return 1
    finally:
        close()
    store = Store(cfg.db_path)
    metrics = Metrics(store, adapter_prefix=cfg.deploy.adapter_prefix)
    backend = open_backend(
        cfg.serving,
        inputs.base_model,
        on_event=lambda kind, payload: store.record_event(kind, **payload),
        registry=metrics.registry,
    )
    loop = Loop(cfg, inputs, backend=backend, store=store, metrics=metrics)
    Daemon(loop, metrics=metrics, config_path=args.config).run_forever()
    return 0

"""loopd's command line: one module per command, each adding its own subparser.

Every command module exposes ``add_parser(subparsers)``, which registers the command
and sets ``func`` to a handler ``(argparse.Namespace) -> int`` returning the exit status.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from loopd.cli import adapters, config, demo, detect, model, rounds, run, status

COMMANDS = (run, rounds, demo, detect, status, adapters, config, model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loopd", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers deprecations raised inside PEFT are noise to an operator, not news
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

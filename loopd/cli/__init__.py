"""loopd's command line: one module per command, imported only when that command runs.

Why lazy. The daemon's commands need torch and transformers, seconds to import on a
small machine, while ``loopd detect`` in a shell pipeline does microseconds of work per
completion; importing every command to build the parser made it wait ~10 s for torch.
So the table below names each command's module and one-line help, ``loopd --help``
lists them from the table alone, and only the command being run is imported.

Every command module exposes ``add_parser(subparsers, summary)``, which registers the
command with that one-line help and sets ``func`` to a handler ``(argparse.Namespace) -> int``
returning the exit status.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from importlib import import_module
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    help: str


DESCRIPTION = "Find repetition loops in a served model's outputs and train them away, online."
COMMANDS: dict[str, Command] = {
    "run": Command("loopd.cli.run", "run the daemon (sample, train, gate, deploy)"),
    "rounds": Command(
        "loopd.cli.rounds", "run N training rounds on the configured model, with a table"
    ),
    "demo": Command(
        "loopd.cli.demo",
        "find loops in the embedded tiny model and train them away (CPU, offline)",
    ),
    "detect": Command("loopd.cli.detect", "detect repetition loops in completions"),
    "status": Command("loopd.cli.status", "live adapter, rates, last decision, rounds, next jobs"),
    "adapters": Command(
        "loopd.cli.adapters", "list, inspect, promote, roll back, pin or unpin adapter versions"
    ),
    "config": Command("loopd.cli.config", "work with config files"),
    "model": Command("loopd.cli.model", "prepare a model folder loopd can train"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser for ``argv``: the full parser of the command it names, a one-line entry
    (enough for ``loopd --help``) for every other command."""
    parser = argparse.ArgumentParser(prog="loopd", description=DESCRIPTION)
    subparsers = parser.add_subparsers(dest="command", required=True)
    named = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, command in COMMANDS.items():
        if name == named:
            import_module(command.module).add_parser(subparsers, command.help)
        else:
            subparsers.add_parser(name, help=command.help)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # transformers deprecations raised inside PEFT are noise to an operator, not news
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    args = build_parser(argv).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

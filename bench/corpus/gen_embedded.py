"""Greedy outputs of loopd's embedded tiny model on its held-out prompts, for the corpus.

    python bench/corpus/gen_embedded.py MODEL_DIR --out /tmp/embedded_raw.jsonl

MODEL_DIR is a folder built by ``loopd.embedded.ensure_embedded`` (it holds ``model/`` and
``heldout.jsonl``). Each output keeps its prompt id, reference, token ids and finish
reason; labelling happens in label_real_outputs.py from the reference, not the detector.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--count", type=int, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(args.model_dir / "model")
    model = AutoModelForCausalLM.from_pretrained(args.model_dir / "model").eval()
    rows = [json.loads(x) for x in (args.model_dir / "heldout.jsonl").open()][: args.count]
    with args.out.open("w") as out, torch.no_grad():
        for row in rows:
            enc = tok(row["prompt"], return_tensors="pt")
            gen = model.generate(
                **enc,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            ids = gen[0, enc["input_ids"].shape[1] :].tolist()
            stopped = tok.eos_token_id in ids
            if stopped:
                ids = ids[: ids.index(tok.eos_token_id)]
            rec = {
                "prompt": row["prompt"],
                "reference": row["reference"],
                "kind": row["kind"],
                "text": tok.decode(ids, skip_special_tokens=True),
                "token_ids": ids,
                "finish_reason": "stop" if stopped else "length",
            }
            out.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()

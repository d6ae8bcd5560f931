"""Generate the fresh 48-token audit set: SmolLM2-135M-Instruct at ``max_tokens = 48``.

The real-output corpus (``gen_real.py``) labels 48-token prefixes of 512-token answers;
the daemon samples at ``max_tokens = 48`` by default, so this set asks the model for 48
tokens directly, on 40 subjects the corpus never used (its templates, greedy and once
sampled), plus 16 prompts of other kinds. The outputs were labelled by a reader who saw
neither the detector nor its verdicts, under the corpus's written rules
(tests/data/detect/README.md), and merged into ``tests/data/detect/fresh48_smollm2.jsonl.gz``.

    .venv/bin/python -m loopd.backends.vllm.server --model models/smollm2 --name smollm2 &
    .venv/bin/python bench/corpus/gen_fresh48.py --out build/fresh48_raw.jsonl   # ~7 min
"""

from __future__ import annotations

import argparse
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from gen_real import ENUMERATIONS, SHORT, TABLES, generate

SUBJECTS = [
    "types of bread", "ocean animals", "martial arts", "hats", "cloud types", "mushrooms",
    "reptiles", "tea varieties", "rock bands", "operas", "famous bridges", "castles",
    "knots", "minerals", "herbs", "nuts", "dinosaurs", "volcanoes", "deserts", "lakes",
    "capital cities in Asia", "yoga poses", "chess openings", "fonts", "birds of prey",
    "shoes", "soups", "planets and moons", "poets", "inventions", "kitchen appliances",
    "airlines", "rivers in Africa", "cartoon characters", "wines", "sandwiches",
    "primates", "keyboard shortcuts", "weather phenomena", "ancient civilizations",
]  # fmt: skip
OTHERS = [
    "Count from 1 to 100 in Roman numerals.",
    "List the months with their number of days.",
    "Write the days of the week in five languages.",
    "Write a haiku about rain, then nine more.",
    "Write a limerick about a cat.",
    "Write a shopping list for a party.",
    "Write a to-do list for moving house.",
    "List 30 words that rhyme with 'light'.",
    "Write a recipe for pancakes.",
    "Write a dialogue between a customer and a waiter.",
    "Write a Python function that checks if a word is a palindrome.",
    "Write a JavaScript function that sorts an array of numbers.",
    "Write a markdown table of the planets with their diameters.",
    "Write a CSV of 20 employees: name,department,salary.",
    "Write a log of a web server starting up.",
    "Write 10 tweets about coffee.",
]


def prompts(seed: int = 29) -> list[str]:
    """The fixed, ordered prompt list (156): three templates per subject, a short
    question for every other subject, and the other kinds."""
    rng = random.Random(seed)
    out = [
        t.format(n=rng.choice((20, 30, 40, 50, 60, 100)), s=s)
        for i, s in enumerate(SUBJECTS)
        for t in (ENUMERATIONS[i % 4], ENUMERATIONS[(i + 2) % 4], TABLES[(i + 1) % 2])
    ]
    out += [SHORT[i % 3].format(s=s) for i, s in enumerate(SUBJECTS[1::2])]
    return out + OTHERS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args()
    todo = [(p, sampled) for p in prompts() for sampled in (False, True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with (
        httpx.Client(base_url=args.url) as client,
        args.out.open("w") as f,
        ThreadPoolExecutor(16) as pool,
    ):
        jobs = [pool.submit(generate, client, args.model, p, s, 48) for p, s in todo]
        for i, job in enumerate(jobs, 1):
            f.write(json.dumps(job.result()) + "\n")
            print(f"{i}/{len(jobs)}", flush=True)


if __name__ == "__main__":
    main()

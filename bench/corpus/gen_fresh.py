"""Generate the fresh audit sets: SmolLM2-135M-Instruct asked for 48 or 128 tokens.

The real-output corpus (``gen_real.py``) labels 48- and 128-token prefixes of 512-token
answers; the daemon samples at ``max_tokens = 48`` by default. These sets ask the model
for 48 (or 128) tokens directly, on subjects the corpus never used (its templates, greedy
and once sampled), plus prompts of other kinds. The outputs were labelled by a reader who
saw neither the detector nor its verdicts, under the corpus's written rules
(tests/data/detect/README.md), and merged into ``tests/data/detect/fresh48_smollm2.jsonl.gz``
and ``fresh128_smollm2.jsonl.gz``.

    .venv/bin/python -m loopd.backends.vllm.server --model models/smollm2 --name smollm2 &
    .venv/bin/python bench/corpus/gen_fresh.py --tokens 48 --out build/fresh48_raw.jsonl
    .venv/bin/python bench/corpus/gen_fresh.py --tokens 128 --out build/fresh128_raw.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import httpx
from gen_real import generate, subject_prompts

SUBJECTS = [  # the 48-token set
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


SUBJECTS_128 = [
    "bicycles parts", "jazz musicians", "board game pieces", "cheeses of France", "spiders",
    "famous ships", "coffee drinks", "sea birds", "garden tools", "rivers in Asia",
    "medieval weapons", "cloud services", "Nobel laureates", "space missions", "cakes",
    "hiking trails", "dog commands", "train stations", "olympic sports", "salads",
    "ferns", "beetles", "musicals", "Shakespeare plays", "lighthouses",
]  # fmt: skip
OTHERS_128 = [
    "Write a long story about a clockmaker and a cat.",
    "Write a poem with a refrain about autumn.",
    "Explain how a bicycle works in detail.",
    "Write a diary of a gardener for two weeks.",
    "Write a markdown table of 30 countries with capital and population.",
    "Write the 12 times table.",
    "Write a Python script that parses a CSV file, with comments.",
    "Write an SQL schema for a library with 6 tables.",
    "Write a song with four verses about trains.",
    "List every month with a holiday in it.",
]


class FreshSet(NamedTuple):
    """How one set's prompts are drawn (see ``gen_real.subject_prompts``)."""

    seed: int
    subjects: list[str]
    shift: tuple[int, int, int]  # which enumerations and table each subject gets
    short: slice  # the subjects also asked a short question
    others: list[str]


SETS = {
    48: FreshSet(29, SUBJECTS, (0, 2, 1), slice(1, None, 2), OTHERS),
    128: FreshSet(31, SUBJECTS_128, (1, 3, 0), slice(None, None, 3), OTHERS_128),
}


def prompts(tokens: int) -> list[str]:
    """The fixed, ordered prompt list of a set (156 prompts for 48 tokens, 94 for 128)."""
    spec = SETS[tokens]
    rng = random.Random(spec.seed)
    return subject_prompts(rng, spec.subjects, spec.shift, spec.subjects[spec.short]) + spec.others


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, choices=sorted(SETS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--model", default="smollm2")
    args = ap.parse_args()
    todo = [(p, sampled) for p in prompts(args.tokens) for sampled in (False, True)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with (
        httpx.Client(base_url=args.url) as client,
        args.out.open("w") as f,
        ThreadPoolExecutor(16) as pool,
    ):
        jobs = [pool.submit(generate, client, args.model, p, s, args.tokens) for p, s in todo]
        for i, job in enumerate(jobs, 1):
            f.write(json.dumps(job.result()) + "\n")
            print(f"{i}/{len(jobs)}", flush=True)


if __name__ == "__main__":
    main()

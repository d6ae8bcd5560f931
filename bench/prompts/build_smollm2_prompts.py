"""Build the loop-provoking chat prompts for SmolLM2 (``configs/prompts/smollm2-*.jsonl``).

Run once; the JSON Lines files are committed, so nothing here runs at test or run time:

    python bench/prompts/build_smollm2_prompts.py --out configs/prompts

The prompts are the kinds of requests a small instruct model falls into loops on (the
shapes seen in SmolLM2's real output, see DESIGN.md), plus controls it answers well:

- ``enumerate``: "List 45 birds, numbered." - the counter-only loop ("39. Violin");
- ``table``: a markdown table of N rows - rows repeat;
- ``story`` / ``summary``: long free text - sentences and paragraphs repeat;
- ``copy``: copy a real document word for word (reference = the document: CER);
- ``transform``: a mechanical rewrite of a real list or document (reference computed);
- ``count`` / ``table_continue``: counting and arithmetic tables (reference computed);
- ``control``: short questions with short answers (no reference: many phrasings are
  right), to show that answers which never looped are left alone.

Documents are real text available offline on any machine: paragraphs of the Python
standard library's module documentation and of the licence texts Debian ships. Train
and held-out prompts never share a subject or a document, so the gate measures prompts
the loop never trained on. Everything is seeded; the same Python gives the same files.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import random
import re
from pathlib import Path

DOC_MODULES = (
    "json csv heapq argparse statistics string sched hashlib tempfile subprocess io time "
    "configparser plistlib socketserver trace timeit pdb unittest site fileinput shelve dbm "
    "zlib optparse getopt rlcompleter turtle smtplib ssl inspect doctest codeop ast"
).split()
LICENCES = ("Apache-2.0", "MPL-2.0", "GPL-3", "LGPL-2.1", "Artistic", "GFDL-1.3")
SUBJECTS = (
    "dog breeds, birds, fruits, countries in Europe, programming languages, vegetables, car "
    "brands, rivers, chemical elements, famous painters, sports, colors, flowers, board games, "
    "cities in the USA, fish species, types of cheese, mountains, kitchen utensils, musical "
    "instruments, animals of Africa, Greek gods, pasta shapes, tools, trees, insects, dances, "
    "cocktails, computer parts, gemstones, spices, breakfast foods, card games, dinosaurs, "
    "planets and moons, famous scientists, languages of Asia, islands, desserts, herbs"
).split(", ")
STORY_TOPICS = (
    "a dragon who learns to cook; a robot lost in a forest; a lighthouse keeper and a storm; "
    "two friends building a boat; a cat who runs a bakery; a girl who finds a secret door; "
    "a town where it never stops raining; an old clock that runs backwards; a detective "
    "searching for a missing painting; a village that wakes up in the sky; a musician who "
    "loses her voice; a boy who can talk to birds; a train that never arrives; a garden that "
    "grows at night; a knight afraid of the dark; a map that changes every morning"
).split("; ")
TABLE_COLUMNS = ("Name, Origin, Notes", "Name, Type, Fact", "Name, Region, Description")
CONTROLS = (
    "What is the capital of France?",
    "How many days are in a week?",
    "What color is the sky on a clear day?",
    "What is 12 plus 30?",
    "Name the largest ocean on Earth.",
    "What do bees make?",
    "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "What is the opposite of hot?",
    "What planet do we live on?",
    "What is the first month of the year?",
    "What gas do plants take in?",
    "How many minutes are in an hour?",
    "What is frozen water called?",
    "Which animal is known as the king of the jungle?",
)
ITEMS = (
    "apples pears plums cherries grapes melons lemons limes figs dates peaches apricots kiwis "
    "mangoes papayas oranges guavas lychees quinces olives hammers saws drills chisels wrenches "
    "pliers rulers levels clamps files rasps axes spades rakes hoes shears ladders buckets"
).split()


def documents() -> list[str]:
    """Real paragraphs of 250-650 characters: stdlib documentation and licence texts."""
    found: list[str] = []
    for name in DOC_MODULES:
        try:
            doc = inspect.getdoc(importlib.import_module(name)) or ""
        except ImportError:
            continue
        found += [_clean(p) for p in doc.split("\n\n")]
    for name in LICENCES:
        path = Path("/usr/share/common-licenses") / name
        if path.is_file():
            found += [_clean(p) for p in path.read_text(errors="replace").split("\n\n")]
    keep = [p for p in found if 250 <= len(p) <= 650 and _is_prose(p)]
    return list(dict.fromkeys(keep))  # drop duplicates, keep order


def _clean(paragraph: str) -> str:
    return re.sub(r"[ \t]+", " ", " ".join(paragraph.split("\n"))).strip()


def _is_prose(text: str) -> bool:
    letters = sum(c.isalpha() or c.isspace() for c in text)
    return letters / len(text) > 0.85 and ">>>" not in text


def chat(content: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def enumerate_prompt(rng: random.Random, subject: str) -> dict:
    count = rng.choice((30, 40, 45, 50, 60))
    template = rng.choice(("List {n} {s}, numbered.", "Name {n} {s}. Number them."))
    return {"kind": "enumerate", "messages": chat(template.format(n=count, s=subject))}


def table_prompt(rng: random.Random, subject: str) -> dict:
    rows = rng.choice((15, 20, 25))
    columns = rng.choice(TABLE_COLUMNS)
    text = f"Make a markdown table of {rows} {subject} with columns {columns}."
    return {"kind": "table", "messages": chat(text)}


def story_prompt(rng: random.Random, topic: str) -> dict:
    template = rng.choice(("Write a long story about {t}.", "Tell me a very long story about {t}."))
    return {"kind": "story", "messages": chat(template.format(t=topic))}


def copy_prompt(rng: random.Random, document: str) -> dict:
    template = rng.choice(
        ("Copy this text exactly:\n\n{d}", "Repeat the following text word for word:\n\n{d}")
    )
    return {"kind": "copy", "messages": chat(template.format(d=document)), "reference": document}


def summary_prompt(rng: random.Random, document: str) -> dict:
    text = f"Summarize this text in detail:\n\n{document}"
    return {"kind": "summary", "messages": chat(text)}


def transform_prompt(rng: random.Random, document: str) -> dict:
    if rng.random() < 0.5:
        items = rng.sample(ITEMS, rng.randint(8, 14))
        text = "Turn this into a numbered list, one item per line: " + ", ".join(items)
        reference = "\n".join(f"{i}. {item}" for i, item in enumerate(items, start=1))
        return {"kind": "transform", "messages": chat(text), "reference": reference}
    text = f"Put each sentence of this text on its own line:\n\n{document}"
    reference = "\n".join(re.split(r"(?<=[.!?])\s+(?=[A-Z])", document))
    return {"kind": "transform", "messages": chat(text), "reference": reference}


def count_prompt(rng: random.Random) -> dict:
    start = rng.choice((1, 1, 10, 20, 50))
    stop = start + rng.choice((29, 39, 49))
    text = f"Count from {start} to {stop}, one number per line."
    reference = "\n".join(str(n) for n in range(start, stop + 1))
    return {"kind": "count", "messages": chat(text), "reference": reference}


def table_continue_prompt(rng: random.Random) -> dict:
    base, last = rng.randint(2, 19), rng.choice((12, 15, 20))
    shown = "\n".join(f"{base} x {k} = {base * k}" for k in range(1, 3))
    text = (
        f"Write the multiplication table of {base} from {base} x 1 to {base} x {last}, "
        f"one line each, like this:\n\n{shown}"
    )
    reference = "\n".join(f"{base} x {k} = {base * k}" for k in range(1, last + 1))
    return {"kind": "table_continue", "messages": chat(text), "reference": reference}


def build(split: str, rng: random.Random, subjects, topics, docs, controls) -> list[dict]:
    rows = []
    for subject in subjects:
        rows += [enumerate_prompt(rng, subject), table_prompt(rng, subject)]
    rows += [story_prompt(rng, t) for t in topics]
    for index, document in enumerate(docs):
        make = (copy_prompt, summary_prompt, transform_prompt)[index % 3]
        rows.append(make(rng, document))
    rows += [count_prompt(rng) for _ in range(6)] + [table_continue_prompt(rng) for _ in range(6)]
    rows += [{"kind": "control", "messages": chat(question)} for question in controls]
    rng.shuffle(rows)
    return [{"id": f"{split}-{i:03d}", **row} for i, row in enumerate(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("configs/prompts"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    docs = documents()
    rng.shuffle(docs)
    subjects, topics = list(SUBJECTS), list(STORY_TOPICS)
    rng.shuffle(subjects)
    rng.shuffle(topics)
    half = len(CONTROLS) // 2
    splits = {
        "train": (subjects[:20], topics[:8], docs[:24], CONTROLS[:half]),
        "heldout": (subjects[20:40], topics[8:16], docs[24:48], CONTROLS[half:]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for split, parts in splits.items():
        rows = build(split, random.Random(f"{args.seed}-{split}"), *parts)
        path = args.out / f"smollm2-{split}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        kinds = sorted({r["kind"] for r in rows})
        counts = {k: sum(r["kind"] == k for r in rows) for k in kinds}
        print(f"{path}: {len(rows)} prompts, {sum('reference' in r for r in rows)} with references")
        print("  " + ", ".join(f"{k} {n}" for k, n in counts.items()))


if __name__ == "__main__":
    main()

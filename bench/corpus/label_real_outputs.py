"""Label real model outputs for the corpus and write tests/data/detect/real_outputs.jsonl.

    python bench/corpus/label_real_outputs.py --smollm2 /tmp/smollm2_raw.jsonl \
        --embedded /tmp/embedded_raw.jsonl

SmolLM2 outputs are labelled by hand: each was read in full and judged against the rule
in tests/data/detect/README.md; the verdicts (with a note on why) are the table below,
keyed by prompt. ``None`` marks an output that is clearly broken but is not a loop under
that rule (items recurring in a varying order, drift, fewer than 3 repeats so far); those
are kept in the file but not scored. Embedded-model outputs are labelled from their
reference answer: degenerate when the answer ends in a run of one word, at least 4 long,
that is longer than any run in the reference (the model kept repeating a doubled word).
loopd's detector is never consulted.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "tests" / "data" / "detect" / "real_outputs.jsonl"

T, F, N = True, False, None
# (prompt prefix, label, note) in generation order.
HAND_LABELS: list[tuple[str, bool | None, str]] = [
    ("List 30 dog breeds", T, "counter loop: 'N. Golden Retriever' to the end"),
    ("Make a markdown table of 15 dog breeds", T, "same table row repeated to the limit"),
    ("List 50 musical instruments", T, "counter loop: 'N. **Bass Bass**'"),
    ("Make a markdown table of 15 musical instruments", N, "rows A, B, C... letter sequence"),
    ("List 40 fruits", T, "counter loop over a 2-line cycle Oranges/Grapes"),
    ("Make a markdown table of 15 fruits", T, "row '| Apple | Japan | Apple |' repeated"),
    ("List 60 countries in Europe", T, "counter loop 'N. Czechia', short closing sentence"),
    ("Make a markdown table of 15 countries", N, "5 rows recurring in varying order"),
    ("List 30 programming languages", N, "drift: 'Scala-Python-Lua-...' variants"),
    ("Make a markdown table of 15 programming", N, "drift: 'LINQ.Syntax.Syntax...' grows"),
    ("List 50 birds", T, "only counters change: 'N. Bluefin-M', short closing sentence"),
    ("Make a markdown table of 15 birds", T, "row repeated"),
    ("List 40 vegetables", N, "5-item cycle with a substitution, < 3 exact repeats"),
    ("Make a markdown table of 15 vegetables", T, "Cucumbers row repeated"),
    ("List 60 car brands", T, "counter loop 'N. Nissan-Kia'"),
    ("Make a markdown table of 15 car brands", T, "cycle of 5 rows repeated"),
    ("List 30 rivers", F, "short, clean"),
    ("Make a markdown table of 15 rivers", T, "Nile row repeated"),
    ("List 50 chemical elements", T, "'S, ' repeated"),
    ("Make a markdown table of 15 chemical elements", F, "rows differ (wrong, not a loop)"),
    ("List 40 famous painters", N, "5 names recurring in varying order"),
    ("Make a markdown table of 15 famous painters", T, "only the year changes: Caravaggio rows"),
    ("List 60 sports", T, "counter loop 'N. American Idol'"),
    ("Make a markdown table of 15 sports", T, "row repeated"),
    ("List 30 colors", T, "counter loop 'N. Grey', short closing sentence"),
    ("Make a markdown table of 15 colors", N, "rows vary, stuck on letter Z"),
    ("List 50 flowers", T, "counter loop 'N. Marjolin'"),
    ("Make a markdown table of 15 flowers", T, "Foliage row repeated"),
    ("List 40 board games", T, "counter loop on one title"),
    ("Make a markdown table of 15 board games", N, "rows A, B, C... letter sequence"),
    ("List 60 cities in the USA", T, "counter loop 'N. San Antonio'"),
    ("Make a markdown table of 15 cities", T, "cycle of 5 rows repeated"),
    ("List 30 fish species", T, "counter loop 'N. Bluefin tuna', short closing sentence"),
    ("Make a markdown table of 15 fish species", T, "row repeated"),
    ("List 50 types of cheese", T, "counter loop 'N. Brie'"),
    ("Make a markdown table of 15 types of cheese", T, "row repeated"),
    ("List 40 mountains", T, "counter loop 'N. Mount Etna'"),
    ("Make a markdown table of 15 mountains", T, "row repeated"),
    ("List 60 kitchen utensils", N, "'1.1.N:' counting; units hold no words"),
    ("Make a markdown table of 15 kitchen utensils", T, "Bread row repeated"),
    ("Count from 1 to 200", F, "counting as asked; units hold no words"),
    ("Write the word 'hello' 100 times", T, "loop (requested, but structurally a loop)"),
    ("Copy this text exactly three times", F, "one copy, stops"),
    ("Repeat the following paragraph", F, "clean"),
    ("Write a long story about a dragon", F, "a sentence repeats ~1.5 times only"),
    ("Write a long story about a robot", T, "sentence loop, 3+ repeats to the limit"),
    ("Write a poem with a refrain", T, "'A refrain of the sea' line loop"),
    ("Write a Python function", F, "clean code"),
    ("Write a CSV file with 20 rows", T, "counter loop over a 2-row cycle John/Jane"),
    ("Write an nginx access log", T, "'12:' repeated"),
    ("Explain photosynthesis", F, "clean"),
    ("Give step-by-step instructions to bake bread", N, "template lines with varying items"),
    ("Write a song with verses", F, "clean"),
    ("List the days of the week", T, "7-day cycle repeated"),
    ("Write a SQL script", F, "clean"),
    ("Describe the history of Rome", N, "paragraph repeats with substitutions, ~2.5 times"),
    ("Write 30 interview questions", T, "counter loop on one question"),
    ("Write a bash script", T, "comment block cycle"),
    ("What are the benefits of exercise", T, "sentence loop"),
    ("Translate 'good morning'", F, "short, clean"),
    ("Name 25 animals of Africa", N, "items recurring in varying order"),
    ("Create a CSV with 25 rows about animals", T, "code line repeated"),
    ("Name 45 planets and moons", T, "counter loop over a 3-item cycle"),
    ("Name 35 Greek gods", N, "items recurring in varying order"),
    ("Create a CSV with 25 rows about Greek gods", T, "'Hera,' repeated"),
    ("Name 25 pasta shapes", T, "only counters change for the last 4+ lines"),
    ("Name 45 tools", T, "counter loop inline: 'N. **Syntax.com**: ...'"),
    ("Create a CSV with 25 rows about tools", T, "CSV row repeated"),
    ("Name 35 trees", N, "5 items recurring in varying order"),
    ("Name 25 insects", N, "sentence repeats twice, then the paragraph restarts varied"),
    ("Create a CSV with 25 rows about insects", T, "'_Company' repeated"),
    ("Name 45 dances", N, "items recurring in varying order"),
    ("Name 35 cocktails", T, "counter loop inline: 'N. **Marauder's Curse** - '"),
    ("Create a CSV with 25 rows about cocktails", F, "template blocks, content varies, stops"),
    ("Name 25 computer parts", T, "'1.1.1.1: ' repeated"),
    ("Name 45 gemstones", T, "counter loop over a 4-item cycle"),
    ("Create a CSV with 25 rows about gemstones", T, "CSV row repeated"),
    ("Name 35 spices", T, "counter loop 'N. **Coconut**'"),
    ("Continue the sequence", F, "counting as asked; units hold no words"),
    ("Write the alphabet", N, "block repeats ~2 times so far"),
    ("Write a recipe for pancakes", T, "5-line ingredient cycle repeated"),
    ("Summarize the plot", F, "clean"),
    ("Write a JSON array", F, "template lines with varying names"),
    (
        "Write a haiku",
        N,
        "ambiguous since issue 13: 4 repeats of 'a moment of light' (~56 chars) close the "
        "poem: legitimate under this corpus's 150-char rule, a loop under the real-output "
        "rule (>= 4 repeats over ~30 chars)",
    ),
    ("List every prime number", F, "counting; units hold no words"),
    ("What is the capital of each country", N, "items recurring in varying order"),
    ("Write a short essay about the ocean", F, "near-repeats, < 3 times"),
    ("Write a letter to a friend", N, "sentence repeats ~2 times so far"),
]


def _hand_label(prompt: str) -> tuple[bool | None, str]:
    for prefix, label, note in HAND_LABELS:
        if prompt.startswith(prefix):
            return label, note
    raise KeyError(f"no hand label for prompt {prompt[:60]!r}; read the output and add one")


def _longest_run(words: list[str]) -> int:
    best = run = 0
    for i, w in enumerate(words):
        run = run + 1 if i and w == words[i - 1] else 1
        best = max(best, run)
    return best


def _trailing_run(words: list[str]) -> int:
    n = 0
    while n < len(words) and words[-1 - n] == words[-1]:
        n += 1
    return n


def embedded_label(text: str, reference: str) -> tuple[bool, str]:
    """Degenerate when the answer ends in a run of one word longer than the reference's."""
    words, ref = re.findall(r"\S+", text), re.findall(r"\S+", reference)
    run = _trailing_run(words) if words else 0
    if run >= 4 and run > _longest_run(ref):
        return (
            True,
            f"'{words[-1]}' repeated {run} times (reference has at most {_longest_run(ref)})",
        )
    return False, "transcription ends without a word loop"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smollm2", type=Path, required=True)
    ap.add_argument("--embedded", type=Path)
    args = ap.parse_args()
    out = []
    for line in args.smollm2.open():
        rec = json.loads(line)
        label, note = _hand_label(rec["prompt"])
        out.append(
            {
                "text": rec["text"],
                "label": label,
                "source": "smollm2",
                "shape": "real_smollm2",
                "finish_reason": rec["finish_reason"],
                "token_ids": rec["token_ids"],
                "prompt": rec["prompt"],
                "note": note,
            }
        )
    if args.embedded:
        for line in args.embedded.open():
            rec = json.loads(line)
            label, note = embedded_label(rec["text"], rec["reference"])
            out.append(
                {
                    "text": rec["text"],
                    "label": label,
                    "source": "embedded",
                    "shape": "real_embedded",
                    "finish_reason": rec["finish_reason"],
                    "token_ids": rec["token_ids"],
                    "prompt": rec["prompt"],
                    "note": note,
                }
            )
    with OUT.open("w") as f:
        for rec in out:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    scored = [r for r in out if r["label"] is not None]
    degenerate = sum(r["label"] for r in scored)
    print(f"{len(out)} real outputs, {len(scored)} scored, {degenerate} degenerate")


if __name__ == "__main__":
    main()

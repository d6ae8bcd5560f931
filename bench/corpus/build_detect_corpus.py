"""Build the labelled degeneration corpus in tests/data/detect/ (deterministic for a seed).

    python bench/corpus/build_detect_corpus.py            # writes tests/data/detect/corpus.jsonl.gz

Every item is ``{id, text, label, source, shape, finish_reason, token_ids}``; ``label`` is
True for a degenerate output (a repetition loop at the end, possibly followed by a short
recovery). Items come from three places (see tests/data/detect/README.md for the rules):

1. Legitimate text found offline on this machine -- Python stdlib source, licence files,
   /usr/share/doc, real logs in /var/log -- and legitimately repetitive text built from
   real data (markdown / CSV tables from /etc/services, zone1970.tab and installed package
   metadata, numbered lists, refrains, separator lines, code with repeated statements,
   synthetic service logs). All labelled False.
2. Constructed loops: a real-text prefix, then a unit (token, phrase, line, sentence
   cycle, paragraph, jittered near-repeat, numbered counter line, table row) repeated
   to a length limit, cut mid-unit like a token limit, sometimes followed by a short
   recovery. Labelled True by construction; every constructed loop repeats its unit at
   least 4 times (3.5 for paragraphs) and covers at least 250 characters.
3. Real model outputs, labelled by hand: ``real_outputs.jsonl`` beside the corpus
   (SmolLM2-135M-Instruct greedy outputs from gen_smollm2.py, and outputs of loopd's
   embedded tiny model), copied in as they are.

Token ids come from the SmolLM2 tokenizer (saved by gen_smollm2.py under /tmp) so the
token-level detector and the vLLM-style baseline see real BPE ids; real outputs keep
the ids the model produced. loopd's detector is never used to label anything.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import random
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "tests" / "data" / "detect"
STDLIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
SITE = ROOT / ".venv" / "lib" / "python3.11" / "site-packages"
TOKENIZER = Path("/tmp/smollm2-135m")


# --- offline sources ----------------------------------------------------------------------


def _read(path: Path) -> str:
    """Text of a file (gunzipped when needed), or '' when it is not UTF-8 text."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        return raw.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return ""


def _files(root: Path, pattern: str, limit: int, rng: random.Random) -> list[str]:
    paths = sorted(p for p in root.rglob(pattern) if p.is_file())
    rng.shuffle(paths)
    texts = []
    for p in paths:
        t = _read(p)
        if len(t) > 400 and "\x00" not in t:
            texts.append(t)
        if len(texts) >= limit:
            break
    return texts


class Sources:
    """The offline text pools the builders draw from."""

    def __init__(self, rng: random.Random) -> None:
        self.code = _files(STDLIB, "*.py", 400, rng)
        lic = [_read(p) for p in sorted(Path("/usr/share/common-licenses").glob("*"))]
        lic += _files(SITE, "*LICENSE*", 200, rng)
        self.licences = [t for t in lic if len(t) > 400]
        self.docs = _files(Path("/usr/share/doc"), "changelog*", 150, rng)
        self.docs += _files(Path("/usr/share/doc"), "README*", 80, rng)
        self.logs = [_read(Path(f"/var/log/{n}")) for n in ("dpkg.log", "alternatives.log")]
        prose = " ".join(re.sub(r"\s+", " ", t) for t in self.licences[:60])
        self.sentences = [
            s.strip()
            for s in re.split(r"(?<=[.!?])\s+", prose)
            if 30 <= len(s.strip()) <= 220 and re.search(r"[a-z]", s)
        ]
        self.services = self._services()
        self.zones = self._zones()
        self.packages = self._packages()
        self.words = sorted({w for w in re.findall(r"[A-Za-z]{4,12}", prose)})

    @staticmethod
    def _services() -> list[list[str]]:
        rows = []
        for line in _read(Path("/etc/services")).splitlines():
            line = line.split("#")[0].split()
            if len(line) >= 2:
                port, proto = line[1].split("/")
                rows.append([line[0], port, proto, " ".join(line[2:]) or "-"])
        return rows

    @staticmethod
    def _zones() -> list[list[str]]:
        rows = []
        for line in _read(Path("/usr/share/zoneinfo/zone1970.tab")).splitlines():
            if line and not line.startswith("#"):
                parts = line.split("\t")
                rows.append([parts[0], parts[1], parts[2], parts[3] if len(parts) > 3 else ""])
        return rows

    @staticmethod
    def _packages() -> list[list[str]]:
        rows = []
        for meta in sorted(SITE.glob("*.dist-info/METADATA")):
            fields = dict.fromkeys(("Name", "Version", "License", "Summary"), "")
            for line in _read(meta).splitlines()[:40]:
                key, _, value = line.partition(": ")
                if key in fields and not fields[key]:
                    fields[key] = value.strip()[:60]
            rows.append(
                [
                    fields["Name"],
                    fields["Version"],
                    fields["License"] or "-",
                    fields["Summary"] or "-",
                ]
            )
        return rows


def _window(text: str, rng: random.Random, lo: int, hi: int) -> str:
    """A line-aligned slice of ``text`` of roughly lo..hi characters."""
    lines = text.splitlines(keepends=True)
    size = rng.randint(lo, hi)
    start = rng.randrange(max(1, len(lines)))
    out, n = [], 0
    for line in lines[start:]:
        out.append(line)
        n += len(line)
        if n >= size:
            break
    if n < lo // 2:  # too close to the end of the file: take the tail instead
        return "".join(lines)[-size:]
    return "".join(out)


# --- legitimate (label False) ---------------------------------------------------------------


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _csv_table(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def table(src: Sources, rng: random.Random) -> tuple[str, str]:
    """A markdown or CSV table of real rows, shuffled, sometimes with prose around it."""
    kind = rng.choice(["services", "zones", "packages"])
    header, rows = {
        "services": (["service", "port", "proto", "aliases"], src.services),
        "zones": (["codes", "coordinates", "zone", "comment"], src.zones),
        "packages": (["name", "version", "license", "summary"], src.packages),
    }[kind]
    rows = rng.sample(rows, min(len(rows), rng.randint(8, 90)))
    if rng.random() < 0.3:
        rows = [[str(i + 1), *r] for i, r in enumerate(rows)]
        header = ["#", *header]
    fmt = rng.choice([_md_table, _csv_table])
    text = fmt(header, rows)
    if rng.random() < 0.5:
        text = f"Here is the {kind} table you asked for:\n\n" + text
    if rng.random() < 0.3:
        text += "\n" + rng.choice(src.sentences) + "\n"
    return text, f"table_{'md' if fmt is _md_table else 'csv'}"


def numeric_table(src: Sources, rng: random.Random) -> tuple[str, str]:
    """A CSV of measurements: rows share a template and differ only in numbers."""
    n = rng.randint(20, 150)
    t0 = rng.randint(0, 10_000)
    rows = [
        [
            f"2024-03-{1 + (t0 + i) // 24 % 28:02d}T{(t0 + i) % 24:02d}:00",
            f"{rng.gauss(20, 5):.1f}",
            f"{rng.randint(30, 90)}",
            f"{rng.random():.3f}",
        ]
        for i in range(n)
    ]
    return _csv_table(["time", "temp_c", "humidity", "load"], rows), "table_numeric"


def numbered_list(src: Sources, rng: random.Random) -> tuple[str, str]:
    """A numbered list of distinct items (package names, zones, words)."""
    pool = rng.choice([[r[0] for r in src.packages], [r[2] for r in src.zones], src.words])
    items = rng.sample(pool, min(len(pool), rng.randint(10, 80)))
    marker = rng.choice(["{}. {}", "{}) {}", "- {1}", "* {1}", "{}. **{}**"])
    body = "\n".join(marker.format(i + 1, it) for i, it in enumerate(items))
    return f"Here are {len(items)} items:\n\n{body}\n", "numbered_list"


def refrain(src: Sources, rng: random.Random) -> tuple[str, str]:
    """Verses separated by a refrain: the same lines recur, never back to back."""
    chorus = "\n".join(rng.sample(src.sentences, 2))
    parts = []
    for _ in range(rng.randint(3, 6)):
        parts.append("\n".join(rng.sample(src.sentences, rng.randint(2, 4))))
        parts.append("Chorus:\n" + chorus)
    return "\n\n".join(parts) + "\n", "refrain"


def separators(src: Sources, rng: random.Random) -> tuple[str, str]:
    """Prose with section rules, a separator line repeated a few times in a row."""
    sep = rng.choice(["-", "=", "*", "#", "~", "_"]) * rng.randint(20, 80)
    blocks = []
    for _ in range(rng.randint(2, 5)):
        blocks.append("\n".join(rng.sample(src.sentences, rng.randint(1, 3))))
        blocks.append("\n".join([sep] * rng.randint(1, 5)))
    return "\n".join(blocks) + "\n", "separators"


def repeated_code(src: Sources, rng: random.Random) -> tuple[str, str]:
    """Code with repeated, template-like statements and a few identical lines in a row."""
    name = rng.choice(src.words).lower()
    lines = [f"def test_{name}(self):"]
    grouped = False  # at most one group of identical lines in a row (2-3 lines)
    for i in range(rng.randint(6, 40)):
        kind = rng.random()
        if kind < 0.5:
            lines.append(f"    self.assertEqual({name}[{i}], {rng.randint(0, 99)})")
        elif kind < 0.8 or grouped:
            lines.append(f"    {name}.append({rng.choice(src.words)!r})")
        else:
            stmt = rng.choice(["pass", "gc.collect()", "time.sleep(0)"])
            lines += ["    " + stmt] * rng.randint(2, 3)
        grouped = kind >= 0.8 and not grouped
    return _window(rng.choice(src.code), rng, 200, 1500) + "\n" + "\n".join(
        lines
    ) + "\n", "code_repeated"


def service_log(src: Sources, rng: random.Random) -> tuple[str, str]:
    """A service log: timestamps, levels, the same messages again and again."""
    msgs = [
        "GET /healthz 200 in {}ms",
        "heartbeat ok",
        "connection from 10.0.0.{} accepted",
        "retrying upstream (attempt {}/5)",
        "cache miss for key user:{}",
        "flushed {} rows",
    ]
    sec = rng.randint(0, 80_000)
    lines = []
    for _ in range(rng.randint(20, 120)):
        sec += rng.choice([0, 1, 1, 2, 5])
        msg = rng.choice(msgs[: rng.randint(2, len(msgs))]).format(rng.randint(1, 250))
        level = rng.choice(["INFO"] * 6 + ["WARN", "DEBUG"])
        day, clock = 1 + sec // 86400, f"{sec // 3600 % 24:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
        ts = f"2024-05-{day:02d} {clock}"
        lines.append(f"{ts},{rng.randint(0, 999):03d} {level} [worker-{rng.randint(1, 4)}] {msg}")
    return "\n".join(lines) + "\n", "log_synthetic"


def near_miss(src: Sources, rng: random.Random) -> tuple[str, str]:
    """Prose with short, legitimate repetition ('very, very, very', 'no no no')."""
    word = rng.choice(["very", "no", "ha", "la", "again and again", "yes", "more"])
    rep = ", ".join([word] * rng.randint(2, 5))
    sents = rng.sample(src.sentences, rng.randint(3, 10))
    sents.insert(rng.randrange(len(sents) + 1), rep.capitalize() + "!")
    return " ".join(sents) + "\n", "near_miss"


def window_of(
    pool: str, lo: int = 600, hi: int = 6000
) -> Callable[[Sources, random.Random], tuple[str, str]]:
    def build(src: Sources, rng: random.Random) -> tuple[str, str]:
        return _window(rng.choice(getattr(src, pool)), rng, lo, hi), pool

    return build


NEGATIVES: list[tuple[Callable[[Sources, random.Random], tuple[str, str]], int]] = [
    (window_of("code"), 150),
    (window_of("licences"), 70),
    (window_of("docs"), 70),
    (window_of("logs"), 40),
    (table, 110),
    (numeric_table, 30),
    (numbered_list, 40),
    (refrain, 25),
    (separators, 25),
    (repeated_code, 30),
    (service_log, 40),
    (near_miss, 30),
]


# --- constructed loops (label True) ----------------------------------------------------------


def _jitter(unit: str, rng: random.Random) -> str:
    """One repetition with casing, punctuation or spacing changed (what 'near' means)."""
    choice = rng.random()
    if choice < 0.3:
        return unit.rstrip(".!?,;\n ") + rng.choice([". ", "! ", ", ", "; ", ".\n", "... "])
    if choice < 0.5:
        return unit[:1].swapcase() + unit[1:]
    if choice < 0.7:
        return unit.replace(" ", "  ", 1)
    if choice < 0.85:
        return unit.upper() if rng.random() < 0.3 else unit.lower()
    return unit


def _unit(shape: str, src: Sources, rng: random.Random) -> str:
    if shape == "token":
        return rng.choice(["the ", "and ", "!", "0", "**", "ha", "lol ", "..", " a", "yes "])
    if shape == "phrase":
        words = rng.choice(src.sentences).split()
        i = rng.randrange(max(1, len(words) - 6))
        return " ".join(words[i : i + rng.randint(2, 6)]) + rng.choice([" ", ", ", "... "])
    if shape in ("line", "code_line"):
        pool = src.code if shape == "code_line" else src.docs
        lines = [ln for ln in rng.choice(pool).splitlines() if len(ln.strip()) > 10]
        return (rng.choice(lines) if lines else rng.choice(src.sentences)) + "\n"
    if shape == "sentence_cycle":
        return " ".join(rng.sample(src.sentences, rng.randint(2, 4))) + " "
    if shape == "paragraph":
        para = ""
        while len(para) < rng.randint(300, 1000):
            para += rng.choice(src.sentences) + " "
        return para.strip() + "\n\n"
    return rng.choice(src.sentences) + " "  # jitter, recovery


def _prefix(src: Sources, rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.15:
        return ""
    if kind < 0.45:
        return " ".join(rng.sample(src.sentences, rng.randint(1, 12))) + rng.choice([" ", "\n\n"])
    if kind < 0.65:
        return _window(rng.choice(src.code), rng, 100, 2500)
    if kind < 0.8:
        return table(src, rng)[0]
    return _window(rng.choice(src.docs + src.licences), rng, 100, 3000)


RECOVERIES = [
    "\n\nI hope this helps!",
    "\n\nLet me know if you need anything else.",
    "\n\nThese are the items you asked for.",
    "\n\n(End of list.)",
    "\n\nThank you.",
]


def loop(shape: str) -> Callable[[Sources, random.Random], tuple[str, str]]:
    def build(src: Sources, rng: random.Random) -> tuple[str, str]:
        prefix = _prefix(src, rng)
        if shape == "counter":
            items = rng.sample([r[0] for r in src.packages] + src.words, rng.choice([1, 1, 1, 2]))
            start = rng.randint(1, 40)
            fmt = rng.choice(["{}. {}\n", "{}) {}\n", "{}. **{}**\n", "| {} | {} |\n"])
            unit_len = len(fmt.format(start, items[0])) * len(items)
            count = max(rng.randint(8, 120), 4 * len(items), 300 // unit_len * len(items) + 2)
            reps = [fmt.format(start + i, items[i % len(items)]) for i in range(count)]
        elif shape == "table_row":
            prefix = table(src, rng)[0] if rng.random() < 0.7 else prefix
            row = "| " + " | ".join(rng.choice(src.services)) + " |\n"
            reps = [row] * max(rng.randint(6, 80), 300 // len(row) + 2)
            unit_len = len(row)
        else:
            unit = _unit(shape, src, rng)
            need = max(4.0 if shape != "paragraph" else 3.5, 250 / len(unit))
            count = int(need) + 1 + int(rng.random() * max(1, 6000 // len(unit) - need))
            jitter = shape == "jitter" or (shape == "phrase" and rng.random() < 0.3)
            reps = [_jitter(unit, rng) if jitter else unit for _ in range(count)]
            unit_len = len(unit)
        body = "".join(reps)
        cut = rng.randint(max(0, len(body) - unit_len + 1), len(body))  # a token limit mid-unit
        body = body[: max(cut, 250, int(3.5 * unit_len))]
        text = prefix + body
        if shape == "recovery" or rng.random() < 0.1:
            text = text.rstrip() + rng.choice(RECOVERIES)
        return text, f"loop_{shape}"

    return build


POSITIVES = [
    (loop("token"), 45),
    (loop("phrase"), 60),
    (loop("line"), 45),
    (loop("code_line"), 30),
    (loop("sentence_cycle"), 55),
    (loop("paragraph"), 45),
    (loop("jitter"), 60),
    (loop("counter"), 45),
    (loop("table_row"), 30),
    (loop("recovery"), 35),
]


# --- assembly -------------------------------------------------------------------------------


def build(seed: int) -> list[dict]:
    rng = random.Random(seed)
    src = Sources(rng)
    items: list[dict] = []
    for label, builders in ((False, NEGATIVES), (True, POSITIVES)):
        for builder, count in builders:
            for _ in range(count):
                text, shape = builder(src, rng)
                finish = "length" if label and not text.endswith(tuple(RECOVERIES)) else "stop"
                source = (
                    "constructed"
                    if label
                    or shape.startswith(
                        (
                            "table",
                            "numbered",
                            "refrain",
                            "separators",
                            "code_repeated",
                            "log_synthetic",
                            "near_miss",
                        )
                    )
                    else "offline"
                )
                items.append(
                    {
                        "text": text,
                        "label": label,
                        "source": source,
                        "shape": shape,
                        "finish_reason": finish,
                    }
                )
    real = OUT_DIR / "real_outputs.jsonl"
    if real.exists():
        for line in real.open():
            rec = json.loads(line)
            keep = ("text", "label", "source", "shape", "finish_reason", "token_ids", "note")
            items.append({k: rec[k] for k in keep if k in rec})
    rng.shuffle(items)
    return items


def add_token_ids(items: list[dict]) -> None:
    """Tokenize items that lack ids with SmolLM2's BPE (real outputs keep their own)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    todo = [it for it in items if "token_ids" not in it]
    enc = tok([it["text"] for it in todo], add_special_tokens=False)["input_ids"]
    for it, ids in zip(todo, enc, strict=True):
        it["token_ids"] = ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT_DIR / "corpus.jsonl.gz")
    args = ap.parse_args()
    items = build(args.seed)
    add_token_ids(items)
    lines = [
        json.dumps({"id": f"d{i:04d}", **it}, ensure_ascii=False) for i, it in enumerate(items)
    ]
    with args.out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(("\n".join(lines) + "\n").encode())  # mtime=0: byte-identical rebuilds
    pos = sum(it["label"] is True for it in items)
    print(f"{len(items)} items ({pos} degenerate) -> {args.out}")


if __name__ == "__main__":
    main()

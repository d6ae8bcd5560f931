"""The detector on real SmolLM2-135M-Instruct outputs, labelled by reading.

``tests/data/detect/real_smollm2.jsonl.gz`` (412 outputs, greedy and sampled, at
``max_tokens`` 512 with the 48- and 128-token prefixes labelled too), the fresh 48-token
set beside it, and their labelling rules are described in tests/data/detect/README.md.
The held-out third was never used to tune the detector. The floors below are the
measured figures (bench/detect.py) less a small margin: they guard against regressions;
the issue's targets are reported, not asserted, where they are not met yet.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from loopd.detect import LoopWatcher, detect

DATA = Path(__file__).parent / "data" / "detect"


def _load(name: str) -> list[dict]:
    with gzip.open(DATA / name, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return _load("real_smollm2.jsonl.gz")


def views(rows: list[dict], split: str, length: str) -> list[dict]:
    """What a request with ``max_tokens = length`` returned, with its label."""
    out = []
    for r in rows:
        if r["split"] != split:
            continue
        if length == "512":
            view = {
                "text": r["text"],
                "ids": r["token_ids"],
                "finish": r["finish_reason"],
                "label": r["label"],
            }
        else:
            cut = r["cuts"][length]
            finish = r["finish_reason"] if len(r["token_ids"]) <= int(length) else "length"
            view = {
                "text": cut["text"],
                "ids": r["token_ids"][: cut["n_tokens"]],
                "finish": finish,
                "label": cut["label"],
            }
        if view["label"] is not None:
            out.append(view)
    return out


def scores(items: list[dict]) -> tuple[float, float]:
    pred = [
        detect(v["text"], token_ids=v["ids"], finish_reason=v["finish"]).degenerate for v in items
    ]
    tp = sum(p and v["label"] for p, v in zip(pred, items, strict=True))
    fp = sum(p and not v["label"] for p, v in zip(pred, items, strict=True))
    fn = sum(v["label"] and not p for p, v in zip(pred, items, strict=True))
    return tp / max(tp + fp, 1), tp / max(tp + fn, 1)


def test_corpus_is_real_labelled_and_split(rows):
    assert len(rows) >= 400
    assert {r["split"] for r in rows} == {"dev", "heldout"}
    assert {r["decoding"] for r in rows} == {"greedy", "sampled"}
    for r in rows:
        assert r["label"] in (True, False, None) and r["token_ids"]
        for length, cut in r["cuts"].items():
            assert cut["n_tokens"] == min(int(length), len(r["token_ids"]))
            assert r["text"].startswith(cut["text"].rstrip("\ufffd"))
    # Both decodings of a prompt fall on the same side of the split.
    sides: dict[str, set[str]] = {}
    for r in rows:
        sides.setdefault(r["prompt"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())


@pytest.mark.parametrize(
    ("split", "length", "min_precision", "min_recall"),
    [
        ("heldout", "512", 0.99, 0.78),
        ("heldout", "128", 0.99, 0.76),
        ("heldout", "48", 0.9, 0.55),
        ("dev", "512", 0.99, 0.9),
        ("dev", "128", 0.99, 0.85),
        ("dev", "48", 0.95, 0.9),
    ],
)
def test_real_outputs_at_each_length(rows, split, length, min_precision, min_recall):
    precision, recall = scores(views(rows, split, length))
    assert precision >= min_precision and recall >= min_recall, (precision, recall)


def _fresh(name: str) -> list[dict]:
    return [
        {
            "text": r["text"],
            "ids": r["token_ids"],
            "finish": r["finish_reason"],
            "label": r["label"],
        }
        for r in _load(name)
        if r["label"] is not None
    ]


def test_fresh_48_token_outputs():
    """312 answers the model gave when asked for 48 tokens, on subjects the corpus never
    used, labelled by a reader blind to the detector (bench/corpus/gen_fresh.py). The
    last round of rules was found on them, so they are not held out: a regression floor."""
    fresh = _fresh("fresh48_smollm2.jsonl.gz")
    assert len(fresh) == 283 and sum(v["label"] for v in fresh) == 43
    precision, recall = scores(fresh)
    assert precision >= 0.9 and recall >= 0.88, (precision, recall)


def test_fresh_128_token_outputs():
    """188 answers asked for 128 tokens, on yet other subjects, labelled the same way and
    measured after the last change (never tuned on): 1.000 / 0.800, as held-out."""
    fresh = _fresh("fresh128_smollm2.jsonl.gz")
    assert len(fresh) == 169 and sum(v["label"] for v in fresh) == 70
    precision, recall = scores(fresh)
    assert precision >= 0.99 and recall >= 0.76, (precision, recall)


def test_streaming_watcher_agrees_with_the_batch_token_rule_on_real_streams(rows):
    for r in rows[::4]:
        ids = r["token_ids"]
        watcher = LoopWatcher()
        det = None
        for t in ids:
            if (det := watcher.feed(t)) is not None:
                break
        det = det or watcher.finish()
        batch = detect("", token_ids=ids[: watcher.consumed])
        assert (det is not None) == batch.degenerate, r["id"]

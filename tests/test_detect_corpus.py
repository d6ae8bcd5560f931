"""The detector on the committed labelled corpus (tests/data/detect/): the issue's targets.

The corpus and how it was labelled are described in tests/data/detect/README.md;
bench/detect.py reports the same figures next to the baselines.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from loopd.detect import detect

CORPUS = Path(__file__).parent / "data" / "detect" / "corpus.jsonl.gz"


@pytest.fixture(scope="module")
def corpus() -> list[dict]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_corpus_is_large_and_labelled(corpus):
    assert len(corpus) >= 1000
    assert len({it["id"] for it in corpus}) == len(corpus)
    sources = {it["source"] for it in corpus}
    assert {"offline", "constructed", "smollm2", "embedded"} <= sources
    assert all(it["label"] in (True, False, None) and it["token_ids"] for it in corpus)


def test_precision_and_f1_meet_the_targets(corpus):
    scored = [it for it in corpus if it["label"] is not None]
    pred = [
        detect(it["text"], token_ids=it["token_ids"], finish_reason=it["finish_reason"]).degenerate
        for it in scored
    ]
    tp = sum(p and it["label"] for p, it in zip(pred, scored, strict=True))
    fp = sum(p and not it["label"] for p, it in zip(pred, scored, strict=True))
    fn = sum(it["label"] and not p for p, it in zip(pred, scored, strict=True))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision == 1.0, (tp, fp, fn)
    assert recall >= 0.99, (tp, fp, fn)


def test_loop_start_is_inside_the_text_and_before_the_end(corpus):
    for it in corpus[:300]:
        det = detect(it["text"], token_ids=it["token_ids"])
        if det.degenerate:
            assert 0 <= det.loop_start < len(it["text"]), it["id"]
            assert 0 <= det.loop_start_token <= len(it["token_ids"]), it["id"]
            assert 0 < det.loop_fraction <= 1 and det.repeats >= 2

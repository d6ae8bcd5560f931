"""``bench/efficacy.py`` end to end at CI size: every row measured, loopd beats the base."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_efficacy_bench_measures_every_row(embedded_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(embedded_dir, tmp_path / "state" / "embedded")  # reuse the session's build
    out = tmp_path / "efficacy.json"
    command = [
        sys.executable, str(REPO / "bench" / "efficacy.py"), "--model", "embedded", "--quick",
        "--rounds", "2", "--state", str(tmp_path / "state"), "--json", str(out),
    ]  # fmt: skip
    finished = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["name"].split(" (")[0]: r["measures"] for r in report["rows"]}
    assert list(rows) == [
        "base", "repetition_penalty 1.2", "no_repeat_ngram_size 4", "stream stop", "SFT-only",
        "loopd r1", "loopd r2",
    ]  # fmt: skip
    base, loopd = rows["base"], rows["loopd r2"]
    assert base["loops"] > 0.2 and loopd["loops"] < base["loops"] / 2
    assert loopd["cer"] < base["cer"]
    assert rows["stream stop"]["mean_tokens"] < base["mean_tokens"]  # stopped early
    for measures in rows.values():
        assert {"gzip", "rep4", "at_limit", "prefix_cer", "ref_logprob"} <= set(measures)
        assert 0.0 <= measures["loops"] <= 1.0
    assert (tmp_path / "state" / "efficacy-embedded.png").read_bytes()[:4] == b"\x89PNG"
    assert "| loopd r2 |" in finished.stdout

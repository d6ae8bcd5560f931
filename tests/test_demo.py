"""``loopd demo`` end to end: table, JSON report and plot from real rounds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loopd.cli import main


def test_demo_writes_the_report_and_plot(
    embedded_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(embedded_dir, tmp_path / "state" / "embedded")  # reuse the session's build
    report = tmp_path / "report.json"
    code = main(
        ["demo", "--rounds", "1", "--state", str(tmp_path / "state"), "--report", str(report)]
    )
    assert code == 0
    rounds = json.loads(report.read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1]
    keys = {
        "round",
        "adapter",
        "degeneration_rate",
        "cer",
        "mean_length",
        "pairs",
        "train_seconds",
        "decision",
    }
    assert all(keys <= set(r) for r in rounds)
    assert rounds[0]["adapter"] == "base" and rounds[0]["degeneration_rate"] >= 0.2
    assert rounds[1]["pairs"] > 0 and rounds[1]["train_seconds"] > 0
    assert (tmp_path / "state" / "demo.png").read_bytes()[:4] == b"\x89PNG"
    assert "decision" in capsys.readouterr().out

"""``loopd status`` and ``/status`` read the database alone, live or stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopd.cli import main
from loopd.store import Store
from loopd.types import Completion, Detection, Prompt


def test_status_reports_live_adapter_counts_and_rounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "loopd.toml"
    config.write_text('state_dir = "state"\n')
    assert main(["status", "--config", str(config)]) == 1
    assert "no database" in capsys.readouterr().out

    store = Store(tmp_path / "state" / "loopd.db")
    prompt = Prompt(id="p", text="doc: a text:", kind="copy")
    store.add_samples(
        [
            (prompt, Completion("p", " a a a a", "length"), Detection(True, "cycle")),
            (prompt, Completion("p", " a", "stop"), Detection(False)),
        ]
    )
    round_id = store.start_round(parent_version=None)
    store.finish_round(round_id, "promoted", candidate_version=1, fresh_pairs=1, replay_pairs=0)
    store.record_event("deployed", version=1, round_id=round_id)
    check = {"name": "degeneration", "passed": True, "detail": "fixed 9 loops, caused 0"}
    store.record_decision("gate", True, "fixed 9", candidate_version=1, checks=[check])

    assert main(["status", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    lines = [" ".join(line.replace("│", " ").split()) for line in text.splitlines()]
    assert "live adapter v0001" in lines and "samples 2 (1 degenerate)" in lines
    assert "loop rate by kind copy 50.0% (2)" in lines
    assert "last decision: gate on v0001: promote" in lines
    assert "ok degeneration fixed 9 loops, caused 0" in lines
    assert "1 promoted v0001 1+0" in lines
    assert main(["status", "--config", str(config), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["live_version"] == 1 and status["degeneration_rate_recent"] == 0.5
    assert status["events"][0]["kind"] == "deployed"
    assert status["rates_by_kind"] == {"copy": {"rate": 0.5, "samples": 2}}
    assert status["last_decision"]["checks"] == [check] and status["pinned_version"] is None

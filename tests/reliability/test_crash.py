"""Kill -9 anywhere: 50 SIGKILLs of the real daemon across every stage, nothing lost.

CI size of ``bench/reliability.py --only crash``; what each check means is in
``bench/crash.py``. Deadlines are generous and nothing is timed: a loaded machine only
makes the run longer.
"""

from __future__ import annotations

from pathlib import Path

import crash

STAGES = {"recover", "sample", "pair", "train", "evaluate", "deploy"}


def test_fifty_kills_in_every_stage_lose_nothing_and_deploy_nothing_bad(
    embedded_dir: Path, tmp_path: Path
) -> None:
    report = crash.run_crash(kills=50, workdir=tmp_path, embedded=embedded_dir, seed=7)
    detail = report.row()["detail"]
    assert report.violations == [], report.violations
    assert report.kills == 50
    assert set(report.by_stage) >= STAGES, detail["kills_by_stage"]
    assert report.samples_acknowledged > 0 and report.samples_lost == 0
    assert report.bad_deployments == 0
    assert report.rounds_interrupted > 0  # kills did land inside rounds ...
    assert report.interrupted_pairs_untrained == 0  # ... and their pairs trained later
    assert report.orphan_trainers == 0
    assert report.prompt_leaks == 0  # no prompt's words in any log line
    assert report.resumed >= report.kills - report.by_stage["recover"]  # schedule resumed

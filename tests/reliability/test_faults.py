"""Injected faults end with loopd healthy, nothing lost, nothing bad deployed.

Each scenario of ``bench/faults.py`` on the real loop (embedded model, real trainer
child, real SQLite file): what was retried, refused or quarantined is asserted here.
"""

from __future__ import annotations

from pathlib import Path

import faults
import pytest


def run(name: str, tmp_path: Path, embedded_dir: Path) -> faults.Row:
    [row] = faults.run_faults(tmp_path, embedded_dir, [name])
    assert row.samples_lost == 0 and row.bad_deployments == 0, row
    return row


@pytest.mark.parametrize(
    ("name", "kind", "says"),
    [
        ("trainer crashes", "crashed", "no_such_module"),
        ("trainer hangs", "timeout", "timeout_seconds=1"),
        ("trainer out of memory", "out_of_memory", "memory"),
    ],
)
def test_a_failing_trainer_is_retried_then_quarantined(
    name: str, kind: str, says: str, tmp_path: Path, embedded_dir: Path
) -> None:
    row = run(name, tmp_path, embedded_dir)
    assert row.faults == 2 and row.detail["kinds"] == [kind, kind]  # retried once
    assert f"failed the same way ({kind})" in row.detail["quarantined"]
    assert says in row.detail["errors"][0]
    assert row.recovered == row.faults  # sampling went on; new settings train again


def test_a_corrupted_adapter_is_never_deployed(tmp_path: Path, embedded_dir: Path) -> None:
    row = run("corrupted adapter file", tmp_path, embedded_dir)
    assert "does not match its checksum" in row.detail["candidate"]
    assert row.recovered == 2  # refused as a candidate; replaced by its parent at start


def test_a_locked_database_fails_one_job_and_the_next_one_stores(
    tmp_path: Path, embedded_dir: Path
) -> None:
    row = run("database locked", tmp_path, embedded_dir)
    assert row.detail["job_errors"] == 1 and row.recovered == 1


def test_a_full_disk_fails_cleanly_and_loopd_carries_on_once_space_is_back(
    tmp_path: Path, embedded_dir: Path
) -> None:
    row = run("disk full", tmp_path, embedded_dir)
    assert row.faults == 2, row.detail  # the sampling job and the training round failed
    assert row.recovered == 2  # sampling stored again, nothing half-published, base live

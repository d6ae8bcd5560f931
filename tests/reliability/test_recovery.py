"""What recovery relies on, one property at a time: backoff and quarantine, prompt
identity, leftovers of a killed daemon, and a trainer that dies with its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loopd import readiness
from loopd.config import TrainingConfig
from loopd.inputs import refuse_reused_ids
from loopd.store import INTERRUPTED_REASON, Store
from loopd.train import PID_FILE, kill_orphan_trainers
from loopd.types import CLEAN, Completion, Prompt


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def failed_round(store: Store, key: str, kind: str) -> None:
    round_id = store.start_round(parent_version=None, attempt_key=key)
    store.finish_round(round_id, "failed", error_kind=kind, error="boom")


def wait_until(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_failed_rounds_back_off_doubling_then_are_quarantined(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(tmp_path / "loopd.db", clock=clock)
    cfg = TrainingConfig(retry_backoff_seconds=60, max_failed_attempts=3)
    check = lambda: readiness.repeated_failure(store, "k", cfg, clock())  # noqa: E731
    assert check() is None
    failed_round(store, "k", "timeout")
    assert "backing off after 1 failed round(s) (timeout)" in check()
    clock.now += 59
    assert check() is not None
    clock.now += 1
    assert check() is None  # 60 s after the first failure
    failed_round(store, "k", "crashed")
    clock.now += 119
    assert "backing off after 2" in check()  # doubled: 120 s
    clock.now += 1
    assert check() is None
    failed_round(store, "k", "killed")  # three different failures in a row
    assert check().startswith("quarantined: 3 rounds in a row")
    assert readiness.repeated_failure(store, "other pairs", cfg, clock()) is None


def test_an_interrupted_round_ends_the_failure_run(tmp_path: Path) -> None:
    store = Store(tmp_path / "loopd.db")
    cfg = TrainingConfig(retry_backoff_seconds=0)
    failed_round(store, "k", "crashed")
    store.start_round(parent_version=None, attempt_key="k")
    assert store.interrupt_running_rounds() == 1  # a kill, not the trainer's fault
    assert store.rounds(1)[0]["error"] == INTERRUPTED_REASON
    failed_round(store, "k", "crashed")
    assert readiness.repeated_failure(store, "k", cfg, time.time()) is None


def test_a_prompt_whose_words_change_keeps_its_old_samples_words(tmp_path: Path) -> None:
    store = Store(tmp_path / "loopd.db")

    def add(text: str) -> None:
        completion = Completion(prompt_id="p1", text=f"answer to {text}", finish_reason="stop")
        store.add_samples([(Prompt(id="p1", text=text), completion, CLEAN)])

    add("the old words")
    add("the new words")  # the prompt file was edited, or another file reuses the id
    add("the old words")
    sql = (
        "SELECT s.text, p.text AS prompt FROM samples s"
        " JOIN prompts p ON p.id = s.prompt_id ORDER BY s.id"
    )
    rows = list(store.db.query(sql))
    assert [r["text"].removeprefix("answer to ") for r in rows] == [r["prompt"] for r in rows]
    assert len({r["prompt"] for r in rows}) == 2


def test_an_id_used_twice_is_refused_naming_both_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    one, other = Prompt(id="x", text="one"), Prompt(id="x", text="other")
    with pytest.raises(ValueError, match=r"'x' is used in .*a\.jsonl and .*b\.jsonl"):
        refuse_reused_ids([(a, [one]), (b, [other])])
    with pytest.raises(ValueError, match=r"a\.jsonl \(twice\)"):
        refuse_reused_ids([(a, [one, other])])
    with pytest.raises(ValueError, match="used in"):
        refuse_reused_ids([(a, [one]), (a, [one])])  # the same file named twice
    refuse_reused_ids([(a, [one]), (b, [Prompt(id="y", text="one")])])


def test_a_trainer_left_by_a_killed_daemon_is_killed_at_recovery(tmp_path: Path) -> None:
    scratch = tmp_path / ".staging-v0001-1.job-abc"
    scratch.mkdir()
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)", "loopd.backends.trl_dpo"],
        start_new_session=True,
    )
    (scratch / PID_FILE).write_text(str(stray.pid))
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    (tmp_path / ".staging-v0002-1.job-def").mkdir()
    (tmp_path / ".staging-v0002-1.job-def" / PID_FILE).write_text(str(bystander.pid))
    try:
        assert kill_orphan_trainers(tmp_path) == 1
        assert stray.wait(timeout=60) == -signal.SIGKILL
        assert bystander.poll() is None  # a reused pid that is not a trainer is left alone
    finally:
        stray.kill()
        bystander.kill()


def test_the_trainer_exits_when_its_daemon_is_killed(tmp_path: Path) -> None:
    """The real trainer entry point, its parent SIGKILLed: it exits by itself. Its job
    file is a FIFO nobody writes, so without the parent watch it would block forever."""
    job = tmp_path / "job.json"
    os.mkfifo(job)
    parent = subprocess.Popen(
        [
            sys.executable, "-c",
            "import os, subprocess, sys, time;"
            "child = subprocess.Popen("
            "[sys.executable, '-m', 'loopd.backends.trl_dpo', sys.argv[1]],"
            " env=os.environ | {'LOOPD_PARENT_PID': str(os.getpid())});"
            "print(child.pid, flush=True); time.sleep(600)",
            str(job),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    trainer = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()

    def gone() -> bool:
        try:
            os.kill(trainer, 0)
        except ProcessLookupError:
            return True
        status = Path(f"/proc/{trainer}/stat").read_text().split()[2]
        return status == "Z"

    assert wait_until(gone), "the trainer outlived its daemon"

"""Training: real TRL DPO steps in a child process; failures never escape as crashes."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from loopd.config import TrainingConfig
from loopd.embedded import degenerate_answer
from loopd.train import TrainingFailed, run_round
from loopd.types import Pair, Prompt


def pairs_from(embedded_dir: Path, count: int = 8) -> list[Pair]:
    rows = [json.loads(line) for line in (embedded_dir / "train.jsonl").open()]
    doubled = [r for r in rows if r["kind"] == "doubled"][:count]
    return [
        Pair(
            prompt=Prompt(id=r["id"], text=r["prompt"], reference=r["reference"]),
            chosen=" " + r["reference"],
            rejected=" " + " ".join(degenerate_answer(r["reference"].split())),
            chosen_source="reference",
            sample_id=i,
        )
        for i, r in enumerate(doubled)
    ]


FAST = TrainingConfig(epochs=1, batch_size=4)
TRAINER_MODULE = "loopd.backends.trl_dpo"


def test_a_round_trains_a_new_adapter(base_model: Path, embedded_dir: Path, tmp_path: Path) -> None:
    steps = []
    result = run_round(
        pairs_from(embedded_dir),
        base_model=base_model,
        init_adapter=None,
        out_dir=tmp_path / "out",
        cfg=FAST,
        on_progress=lambda step, total, loss: steps.append(step),
    )
    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # B starts at zero: it moved
    assert (result.pairs_used, result.steps, result.dropped_overlong) == (8, 2, 0)
    assert result.metrics["misaligned_pairs"] == 0
    assert (result.metrics["micro_batch"], result.metrics["accumulation"]) == (4, 1)
    assert result.metrics["peak_memory_gb"] > 0
    assert steps and max(steps) == 2


def test_continuing_from_an_adapter_changes_it(
    base_model, embedded_dir, make_adapter, tmp_path
) -> None:
    start = make_adapter(5)
    cfg = FAST.model_copy(update={"reference_policy": "base"})
    run_round(
        pairs_from(embedded_dir),
        base_model=base_model,
        init_adapter=start,
        out_dir=tmp_path / "o",
        cfg=cfg,
    )
    before = load_file(start / "adapter_model.safetensors")
    after = load_file(tmp_path / "o" / "adapter_model.safetensors")
    assert before.keys() == after.keys()  # only the "default" adapter, not TRL's "ref" copy
    assert any(not before[k].equal(after[k]) for k in before)


def test_over_long_pairs_are_dropped_and_counted(base_model, embedded_dir, tmp_path) -> None:
    pairs = pairs_from(embedded_dir, 4)
    long = replace(pairs[0], chosen=" amber" * 300)
    result = run_round(
        [*pairs, long], base_model=base_model, init_adapter=None, out_dir=tmp_path / "o", cfg=FAST
    )
    assert (result.pairs_used, result.dropped_overlong) == (4, 1)


def test_an_over_long_loop_is_cut_not_dropped(base_model, embedded_dir, tmp_path) -> None:
    pairs = pairs_from(embedded_dir, 4)
    endless = replace(pairs[0], rejected=pairs[0].rejected + " amber" * 300)
    result = run_round(
        [*pairs, endless], base_model=base_model, init_adapter=None, out_dir=tmp_path / "o",
        cfg=FAST,
    )  # fmt: skip
    assert (result.pairs_used, result.dropped_overlong, result.metrics["rejected_cut"]) == (5, 0, 1)


def test_when_every_pair_is_too_long_the_round_says_which_setting(
    base_model, embedded_dir, tmp_path
) -> None:
    pairs = [replace(p, chosen=" amber" * 300) for p in pairs_from(embedded_dir, 2)]
    with pytest.raises(TrainingFailed, match="raise it") as error:
        run_round(pairs, base_model=base_model, init_adapter=None, out_dir=tmp_path / "o", cfg=FAST)
    assert error.value.kind == "no_trainable_pairs"
    assert "training.max_length=256" in str(error.value)


FAULTY = (sys.executable, str(Path(__file__).with_name("faulty_trainer.py")))


def test_a_trainer_killed_by_sigkill_is_reported_and_retried_smaller(
    base_model, embedded_dir, tmp_path, monkeypatch, caplog
) -> None:
    monkeypatch.setenv("LOOPD_TEST_FAULT", "sigkill_once")
    caplog.set_level(logging.WARNING, logger="loopd.train")
    result = run_round(
        pairs_from(embedded_dir), base_model=base_model, init_adapter=None,
        out_dir=tmp_path / "o", cfg=FAST, trainer=FAULTY,
    )  # fmt: skip
    retry = next(r for r in caplog.records if "retrying with a smaller" in r.message)
    assert "trainer killed by SIGKILL — likely out of memory at micro-batch 4 ×" in retry.error
    assert (result.metrics["micro_batch"], result.metrics["accumulation"]) == (2, 2)
    assert result.steps == 2  # the same optimizer steps: accumulation made up the batch


def test_an_allocation_failure_backs_off_until_one_pair_then_names_the_fix(
    base_model, embedded_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("LOOPD_TEST_FAULT", "oom_always")
    with pytest.raises(TrainingFailed) as error:
        run_round(
            pairs_from(embedded_dir), base_model=base_model, init_adapter=None,
            out_dir=tmp_path / "o", cfg=FAST, trainer=FAULTY,
        )  # fmt: skip
    assert error.value.kind == "out_of_memory"
    assert error.value.plan["micro_batch"] == 1
    message = str(error.value)
    assert "out of memory at micro-batch 1 ×" in message and "can't allocate memory" in message
    assert "lower training.max_length or raise training.memory_budget_gb" in message


def test_a_crashing_trainer_raises_training_failed(embedded_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed, match="no-such-model") as error:
        run_round(
            pairs_from(embedded_dir, 2),
            base_model=tmp_path / "no-such-model",
            init_adapter=None,
            out_dir=tmp_path / "o",
            cfg=FAST,
        )
    assert error.value.kind == "crashed"
    assert "%|" not in str(error.value)  # no progress-bar noise in what gets stored


def test_a_hung_trainer_is_killed_at_the_timeout(base_model, embedded_dir, tmp_path) -> None:
    cfg = FAST.model_copy(update={"timeout_seconds": 0.5})
    with pytest.raises(TrainingFailed, match=r"timeout_seconds=0\.5; killed") as error:
        run_round(
            pairs_from(embedded_dir, 2),
            base_model=base_model,
            init_adapter=None,
            out_dir=tmp_path / "o",
            cfg=cfg,
        )
    assert error.value.kind == "timeout"


def running(process: psutil.Process) -> bool:
    """Alive and not merely a zombie waiting to be reaped."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def trainer_children() -> list[psutil.Process]:
    """This process's running trainer children (``python -m loopd.backends.trl_dpo``)."""
    found = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if TRAINER_MODULE in child.cmdline() and running(child):
                found.append(child)
    return found


def cancel_once_training(cancel: threading.Event, seen: list[psutil.Process]) -> None:
    """Set ``cancel`` as soon as a trainer child runs (not after a guessed delay), noting
    it and its own children so the test can check every one of them is gone."""
    while not cancel.is_set():
        if children := trainer_children():
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    seen.extend([child, *child.children(recursive=True)])
            cancel.set()
        time.sleep(0.05)


def test_a_cancelled_round_kills_its_trainer(base_model, embedded_dir, tmp_path) -> None:
    cancel = threading.Event()
    seen: list[psutil.Process] = []
    watcher = threading.Thread(target=cancel_once_training, args=(cancel, seen), daemon=True)
    watcher.start()
    try:
        with pytest.raises(TrainingFailed, match="interrupted by shutdown") as error:
            run_round(
                pairs_from(embedded_dir, 2),
                base_model=base_model,
                init_adapter=None,
                out_dir=tmp_path / "o",
                cfg=FAST,
                cancel=cancel,
            )
    finally:
        cancel.set()
        watcher.join()
    assert error.value.kind == "interrupted"
    assert seen, "no trainer child was seen running before the cancel"
    assert [p for p in seen if running(p)] == []  # killed, not left to finish the round
    assert not seen[0].is_running()  # and run_round reaped the trainer (no zombie left)
    assert trainer_children() == []


def test_answers_glued_onto_the_prompt_are_counted(base_model, embedded_dir, tmp_path) -> None:
    glued = [
        Pair(**{**p.__dict__, "chosen": p.chosen.lstrip()}) for p in pairs_from(embedded_dir, 4)
    ]
    result = run_round(
        glued, base_model=base_model, init_adapter=None, out_dir=tmp_path / "o", cfg=FAST
    )
    assert result.metrics["misaligned_pairs"] == 4

"""The train stage: run one DPO round in a child process and publish its adapter.

The round continues from the deployed adapter (or starts a new LoRA on the bare base),
trains on the fresh pairs plus a replay sample of older ones, and writes into a staging
folder; only a round that finished in time, with a result, is published as a new
version. Anything else raises ``TrainingFailed`` with a ``kind`` and leaves the deployed
adapter exactly as it was:

- ``out_of_memory``: the trainer hit its memory budget, or the kernel killed it with
  SIGKILL (what the OOM killer does). The round is retried at once with half the
  micro-batch (the optimizer step stays the same, through gradient accumulation); it
  fails only when even one pair per micro-batch does not fit, and then says which
  setting to change;
- ``killed``: another signal ended the trainer; ``crashed``: it raised;
- ``timeout`` / ``interrupted``: ``training.timeout_seconds`` passed, or shutdown;
- ``no_trainable_pairs``: every pair is too long for ``training.max_length``.

The stored message is what an operator needs: the trainer's own failure line or the
Python traceback, with TRL's and transformers' progress-bar noise removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

from loopd.config import TrainingConfig
from loopd.types import Pair, TrainResult

log = logging.getLogger(__name__)

ProgressHook = Callable[[int, int, float | None], None]
TRAINER_MODULE = "loopd.backends.trl_dpo"
TRAINER_COMMAND = (sys.executable, "-m", TRAINER_MODULE)
POLL_SECONDS = 0.5
PID_FILE = "trainer.pid"
TRAINING_LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "loopd")
PARENT_ENV = "LOOPD_PARENT_PID"  # the child exits when this process is gone (trl_dpo)
# glibc's adaptive mmap threshold lets freed activation buffers pile up in its heap: the
# same DPO step peaked at 14.3 GB instead of 11.2 (SmolLM2, micro-batch 4 × 591 tokens).
# A fixed threshold returns every large buffer to the OS on free (loopd.memory).
TRAINER_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
_PROGRESS_NOISE = re.compile(r"\r|\d+%\|| it/s\]|s/it\]|^\s*$")


class TrainingFailed(RuntimeError):
    """A training round did not produce an adapter; the deployed one keeps serving."""

    def __init__(self, message: str, *, kind: str = "crashed", plan: dict | None = None):
        super().__init__(message)
        self.kind = kind
        self.plan = plan or {}


@dataclass
class _ChildReport:
    """What the trainer said on stdout: its batching plan and how it ended."""

    plan: dict[str, Any] = field(default_factory=dict)
    failure: dict[str, Any] = field(default_factory=dict)


def run_round(
    pairs: list[Pair],
    *,
    base_model: Path,
    init_adapter: Path | None,
    out_dir: Path,
    cfg: TrainingConfig,
    on_progress: ProgressHook | None = None,
    cancel: threading.Event | None = None,
    trainer: Sequence[str] | None = None,
) -> TrainResult:
    """Train ``pairs`` into ``out_dir`` in a child process bounded by ``cfg.timeout_seconds``.

    Setting ``cancel`` (the daemon does on SIGTERM) kills the child within a second, so a
    shutdown never waits out a long round. Out of memory, the round is retried with half
    the micro-batch until one pair per micro-batch; the timeout covers all attempts.
    ``trainer`` is the child's command line, to which the job file's path is added
    (default: ``trainer_command(cfg)``).
    """
    trainer = trainer or trainer_command(cfg)
    deadline = time.monotonic() + cfg.timeout_seconds
    cap: int | None = None
    while True:
        try:
            job = _job(pairs, base_model, init_adapter, out_dir, cfg, cap)
            return _attempt(job, trainer, cfg, deadline, on_progress, cancel)
        except TrainingFailed as error:
            micro = error.plan.get("micro_batch")
            if error.kind != "out_of_memory" or not micro or micro == 1:
                raise
            cap = micro // 2
            log.warning(
                "training ran out of memory; retrying with a smaller micro-batch",
                extra={"micro_batch": micro, "retry_micro_batch": cap, "error": str(error)},
            )


def trainer_command(cfg: TrainingConfig) -> list[str]:
    """The child's command line: the trainer module, alone or under ``accelerate launch``.

    Without an accelerate config, several ranks are launched as accelerate's multi-GPU
    (torchrun) launcher; on a machine with no GPU, TRL's ``use_cpu`` makes every rank
    join over gloo, so the same command runs data parallel on CPUs (what CI tests).
    """
    if cfg.launcher == "process":
        return list(TRAINER_COMMAND)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet"]
    if cfg.accelerate_config is not None:
        launch += ["--config_file", str(cfg.accelerate_config)]
    elif cfg.num_processes > 1:
        launch += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no"]
        launch += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    else:
        launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, "--num_processes", str(cfg.num_processes), "--module", TRAINER_MODULE]


def lineage(fresh: Sequence[Pair], replay: Sequence[Pair]) -> dict[str, Any]:
    """What a round trained on, for its manifest: pair ids and one hash over them."""
    ids = sorted(p.id for p in [*fresh, *replay])
    digest = hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()
    return {"fresh": [p.id for p in fresh], "replay": [p.id for p in replay], "sha256": digest}


def chosen_logps_fell(previous: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    """A line saying so when this round ended with lower chosen log-probs than the last.

    Both rounds' values are TRL's ``logps/chosen`` at their last logging step: the mean
    log-likelihood of the chosen answers under the policy. When it falls round after
    round, DPO is widening the margin by pushing *both* answers down — the model grows
    less likely to say anything it was taught, a known DPO failure.
    """
    before = (previous or {}).get("logps_chosen")
    after = current.get("logps_chosen")
    if before is None or after is None or after >= before:
        return None
    return f"chosen log-probs fell from {before:.3f} to {after:.3f} since the last round"


def library_versions() -> dict[str, str]:
    """The versions of what trains, for the manifest (the child runs in this environment)."""
    return {name: metadata.version(name) for name in TRAINING_LIBRARIES}


def _free_port() -> int:
    """A port for the ranks' rendezvous, so two rounds (or test runs) never collide."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _job(
    pairs: list[Pair],
    base_model: Path,
    init_adapter: Path | None,
    out_dir: Path,
    cfg: TrainingConfig,
    cap: int | None,
) -> dict[str, Any]:
    return {
        "base_model": str(base_model),
        "init_adapter": None if init_adapter is None else str(init_adapter),
        "pairs": [pair_record(p) for p in pairs],
        "out_dir": str(out_dir),
        "training": cfg.model_dump(),
        "micro_batch_cap": cap,
    }


def _attempt(
    job: dict[str, Any],
    trainer: Sequence[str],
    cfg: TrainingConfig,
    deadline: float,
    on_progress: ProgressHook | None,
    cancel: threading.Event | None,
) -> TrainResult:
    out_dir = Path(job["out_dir"])  # the job (every prompt) lives beside it, inside state_dir
    with tempfile.TemporaryDirectory(prefix=f"{out_dir.name}.job-", dir=out_dir.parent) as scratch:
        job = job | {"result_path": str(Path(scratch) / "result.json")}
        job_path = Path(scratch) / "job.json"
        job_path.write_text(json.dumps(job))
        command = [*trainer, str(job_path)]
        _run_child(command, Path(scratch) / "stderr.log", cfg, deadline, on_progress, cancel)
        result = json.loads(Path(job["result_path"]).read_text())
    return TrainResult(adapter_dir=Path(job["out_dir"]), **result)


def pair_record(pair: Pair) -> dict[str, Any]:
    return {
        "prompt": asdict(pair.prompt),
        "chosen": pair.chosen,
        "rejected": pair.rejected,
        "chosen_eos": pair.chosen_eos,
        "rejected_eos": pair.rejected_eos,
        "loop_start": pair.loop_start,
    }


def _run_child(
    command: list[str],
    stderr_path: Path,
    cfg: TrainingConfig,
    deadline: float,
    on_progress: ProgressHook | None,
    cancel: threading.Event | None,
) -> None:
    report = _ChildReport()
    with stderr_path.open("w") as stderr:
        child = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
            env=os.environ | TRAINER_ENVIRONMENT | {PARENT_ENV: str(os.getpid())},
        )
        (stderr_path.parent / PID_FILE).write_text(str(child.pid))
        reader = threading.Thread(
            target=_relay, args=(child.stdout, on_progress, report), daemon=True
        )
        reader.start()
        try:
            code = _wait(child, cfg.timeout_seconds, deadline, cancel or threading.Event())
        finally:
            reader.join(timeout=5)
    if code != 0:
        raise _failure(code, report, error_tail(stderr_path.read_text()))


def kill_orphan_trainers(root: Path) -> int:
    """Kill trainers a dead daemon left behind under ``root``; returns how many.

    Each round's scratch folder holds its child's pid; the child also exits by itself once
    its parent is gone, so this only closes the window before it notices.
    """
    killed = 0
    for pid_file in root.glob(f"*/{PID_FILE}"):
        pid = int(pid_file.read_text() or 0)
        if pid and _is_trainer(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
                killed += 1
    return killed


def _is_trainer(pid: int) -> bool:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return TRAINER_MODULE.encode() in command


def _failure(code: int, report: _ChildReport, stderr_tail: str) -> TrainingFailed:
    """Name what ended the child, and the settings to change where there are some."""
    plan = report.plan
    where = f"micro-batch {plan['micro_batch']} × {plan['seq_len']} tokens" if plan else None
    if code < 0:
        name = signal.Signals(-code).name
        if -code == signal.SIGKILL:
            return TrainingFailed(
                f"trainer killed by {name} — likely out of memory"
                + (f" at {where}" if where else "")
                + "; lower training.batch_size or max_length, or set training.memory_budget_gb",
                kind="out_of_memory",
                plan=plan,
            )
        return TrainingFailed(f"trainer killed by {name}:\n{stderr_tail}", kind="killed", plan=plan)
    kind = report.failure.get("kind", "crashed")
    message = report.failure.get("message") or f"trainer exited with status {code}"
    if kind == "out_of_memory":
        message = f"out of memory at {where or 'the first step'} (budget "
        message += f"{plan.get('budget_gb', '?')} GiB): {report.failure.get('message')}"
        if plan.get("micro_batch") == 1:
            message += "; even one pair does not fit: lower training.max_length or raise "
            message += "training.memory_budget_gb"
        return TrainingFailed(message, kind=kind, plan=plan)
    details = stderr_tail if kind == "crashed" else ""
    return TrainingFailed(f"{message}\n{details}".rstrip(), kind=kind, plan=plan)


def error_tail(stderr: str, *, lines: int = 25) -> str:
    """The part of the trainer's stderr that explains a failure.

    The last Python traceback when there is one; otherwise the last lines that are not
    progress bars (tqdm redraws with carriage returns, which would fill a stored error
    with "Map: 100%|████|" and nothing else).
    """
    start = stderr.rfind("Traceback (most recent call last)")
    text = stderr[start:] if start >= 0 else stderr
    kept = [line for line in text.splitlines() if not _PROGRESS_NOISE.search(line)]
    return "\n".join(kept[-lines:])


def _wait(child: subprocess.Popen, timeout: float, deadline: float, cancel: threading.Event) -> int:
    """The child's exit status; kill its whole process group on timeout or cancel."""
    while True:
        try:
            return child.wait(timeout=min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            reason = _stop_reason(deadline, timeout, cancel)
            if reason is not None:
                _kill_group(child)
                raise TrainingFailed(reason[1], kind=reason[0]) from None


def _kill_group(child: subprocess.Popen) -> None:
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def _stop_reason(
    deadline: float, timeout: float, cancel: threading.Event
) -> tuple[str, str] | None:
    if cancel.is_set():
        return "interrupted", "training round interrupted by shutdown; killed"
    if time.monotonic() >= deadline:
        return "timeout", f"training round exceeded training.timeout_seconds={timeout:g}; killed"
    return None


def _relay(stream: IO[str], on_progress: ProgressHook | None, report: _ChildReport) -> None:
    """Forward the child's JSON lines to the log, the progress hook and ``report``."""
    for line in stream:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            log.debug("trainer output", extra={"line": line.rstrip()})
            continue
        event = message.pop("event", None)
        if event == "plan":
            report.plan = message
            log.info("training plan", extra=message)
        elif event == "failed":
            report.failure = message
        elif event == "progress":
            log.info("training progress", extra=message)
            if on_progress is not None:
                on_progress(message["step"], message["total"], message.get("loss"))

"""The train stage: run one DPO round in a child process and publish its adapter.

The round continues from the deployed adapter (or starts a new LoRA on the bare base),
trains on the fresh pairs plus a replay sample of older ones, and writes into a staging
folder; only a round that finished in time, with a result, is published as a new
version. Anything else (a crash, an OOM kill, a timeout) raises ``TrainingFailed`` and
leaves the deployed adapter exactly as it was.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from loopd.config import TrainingConfig
from loopd.types import Pair, TrainResult

log = logging.getLogger(__name__)

ProgressHook = Callable[[int, int, float | None], None]
TRAINER_MODULE = "loopd.backends.trl_dpo"
POLL_SECONDS = 0.5


class TrainingFailed(RuntimeError):
    """A training round did not produce an adapter; the deployed one keeps serving."""


def run_round(
    pairs: list[Pair],
    *,
    base_model: Path,
    init_adapter: Path | None,
    out_dir: Path,
    cfg: TrainingConfig,
    on_progress: ProgressHook | None = None,
    cancel: threading.Event | None = None,
) -> TrainResult:
    """Train ``pairs`` into ``out_dir`` in a child process bounded by ``cfg.timeout_seconds``.

    Setting ``cancel`` (the daemon does on SIGTERM) kills the child within a second, so a
    shutdown never waits out a long round.
    """
    with tempfile.TemporaryDirectory(prefix="loopd-train-") as scratch:
        job = {
            "base_model": str(base_model),
            "init_adapter": None if init_adapter is None else str(init_adapter),
            "pairs": [_pair_record(p) for p in pairs],
            "out_dir": str(out_dir),
            "result_path": str(Path(scratch) / "result.json"),
            "training": cfg.model_dump(),
        }
        job_path = Path(scratch) / "job.json"
        job_path.write_text(json.dumps(job))
        stderr_path = Path(scratch) / "stderr.log"
        _run_child(job_path, stderr_path, cfg.timeout_seconds, on_progress, cancel)
        result = json.loads(Path(job["result_path"]).read_text())
    return TrainResult(adapter_dir=out_dir, **result)


def _pair_record(pair: Pair) -> dict[str, Any]:
    return {"prompt": asdict(pair.prompt), "chosen": pair.chosen, "rejected": pair.rejected}


def _run_child(
    job_path: Path,
    stderr_path: Path,
    timeout: float,
    on_progress: ProgressHook | None,
    cancel: threading.Event | None,
) -> None:
    command = [sys.executable, "-m", TRAINER_MODULE, str(job_path)]
    with stderr_path.open("w") as stderr:
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
        reader = threading.Thread(target=_relay, args=(child.stdout, on_progress), daemon=True)
        reader.start()
        try:
            code = _wait(child, timeout, cancel or threading.Event())
        finally:
            reader.join(timeout=5)
    if code != 0:
        tail = stderr_path.read_text()[-2000:]
        raise TrainingFailed(f"trainer process exited with status {code}:\n{tail}")


def _wait(child: subprocess.Popen, timeout: float, cancel: threading.Event) -> int:
    """The child's exit status; kill its whole process group on timeout or cancel."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return child.wait(timeout=min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            reason = _stop_reason(deadline, timeout, cancel)
            if reason is not None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                raise TrainingFailed(reason) from None


def _stop_reason(deadline: float, timeout: float, cancel: threading.Event) -> str | None:
    if cancel.is_set():
        return "training round interrupted by shutdown; killed"
    if time.monotonic() >= deadline:
        return f"training round exceeded training.timeout_seconds={timeout:g}; killed"
    return None


def _relay(stream: IO[str], on_progress: ProgressHook | None) -> None:
    """Forward the child's JSON progress lines to the log and the progress hook."""
    for line in stream:
        try:
            message = json.loads(line)
        except json.JSONDecodeError:
            log.debug("trainer output", extra={"line": line.rstrip()})
            continue
        if message.get("event") == "progress":
            log.info("training progress", extra={k: v for k, v in message.items() if k != "event"})
            if on_progress is not None:
                on_progress(message["step"], message["total"], message.get("loss"))

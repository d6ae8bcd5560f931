"""Injected faults, each ending with loopd healthy and nothing lost: one row per fault.

Every scenario runs the real loop on the embedded model (real trainer child, real
SQLite file, real in-process serving engine) with the daemon's own job wrapper, injects
one kind of fault, and reports what was retried, refused or quarantined:

- the trainer crashing (LoRA targets the model lacks), hanging (past
  ``training.timeout_seconds``) and out of memory (``training.memory_budget_gb`` below
  what the model needs: the trainer runs under that memory limit): the round fails,
  is retried, and the same failure twice quarantines the pairs until the settings change;
- a corrupted adapter file: a candidate whose weights no longer match their checksum is
  never deployed, and a live version corrupted on disk is replaced at start by its
  intact parent;
- the database locked by another process past the busy timeout: the job fails, is
  counted, and the next one stores its samples;
- the disk full (a small tmpfs state folder; SQLite's ``max_page_count`` where mounting
  is not allowed): sampling and training fail cleanly, and succeed once space is back.

After each: every acknowledged sample is still stored, and no deployment happened that
the gate did not promote.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loopd.adapters import AdapterRegistry  # noqa: E402
from loopd.backends.local import LocalBackend  # noqa: E402
from loopd.config import LoopdConfig  # noqa: E402
from loopd.daemon import Daemon  # noqa: E402
from loopd.deploy import DeployFailed  # noqa: E402
from loopd.embedded import HELDOUT_FILE, MODEL_DIRNAME, TRAIN_FILE  # noqa: E402
from loopd.inputs import resolve_inputs  # noqa: E402
from loopd.loop import Loop  # noqa: E402
from loopd.metrics import Metrics  # noqa: E402
from loopd.store import Store  # noqa: E402


@dataclass
class Row:
    scenario: str
    runs: int = 1
    faults: int = 0
    recovered: int = 0
    samples_lost: int = 0
    bad_deployments: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class Harness:
    """A loop and its daemon's job wrapper on one state folder (no scheduler: the
    scenario decides when each job runs, so nothing races the fault)."""

    def __init__(self, state: Path, embedded: Path, **overrides: dict[str, Any]):
        self.cfg = embedded_config(state, embedded, **overrides)
        inputs = resolve_inputs(self.cfg)
        self.backend = LocalBackend(inputs.base_model, threads=1)
        self.store = Store(self.cfg.db_path)
        self.loop = Loop(self.cfg, inputs, backend=self.backend, store=self.store)
        self.daemon = Daemon(self.loop, metrics=Metrics(self.store))
        self.daemon.ensure_recovered()
        self.acknowledged: set[int] = set()

    def sample(self) -> bool:
        """One sampling job as the daemon runs it; what it stored counts as acknowledged."""
        before = self.store.max_sample_id()
        ok = self.daemon.run_job("sample", self.loop.sample_round)
        if ok:
            self.acknowledged.update(range(before + 1, self.store.max_sample_id() + 1))
        return ok

    def sample_until_ready(self, jobs: int = 10) -> None:
        for _ in range(jobs):
            if self.store.count_fresh_pairs() >= self.cfg.training.min_fresh_pairs:
                return
            self.sample()
        raise RuntimeError("the embedded model made too few pairs to train")

    def errors(self, job: str) -> int:
        value = self.daemon.metrics.registry.get_sample_value(
            "loopd_job_runs_total", {"job_name": job, "outcome": "error"}
        )
        return int(value or 0)

    def finish(self, row: Row) -> Row:
        """The invariants every scenario ends on."""
        with contextlib.closing(sqlite3.connect(self.cfg.db_path)) as other:  # committed only
            stored = {r[0] for r in other.execute("SELECT id FROM samples")}
        row.samples_lost = len(self.acknowledged - stored)
        row.bad_deployments = bad_deployments(self.store)
        row.detail["rounds"] = self.store.rounds_by_status()
        return row


def bad_deployments(store: Store) -> int:
    """Automatic deployments of a version no gate decision promoted."""
    promoted = {d["candidate_version"] for d in store.decisions(10_000) if d["promote"]}
    automatic = [
        e["version"]
        for e in store.events(10_000)
        if e["kind"] == "deployed" and json.loads(e["payload"]).get("source") == "gate"
    ]
    return sum(1 for version in automatic if version not in promoted)


def embedded_config(state: Path, embedded: Path, **overrides: dict[str, Any]) -> LoopdConfig:
    """The embedded model and prompts named explicitly (the model stays outside
    ``state``, so a small disk holds only what loopd writes)."""
    raw: dict[str, Any] = {
        "state_dir": str(state),
        "model": {"base": str(embedded / MODEL_DIRNAME)},
        "sampling": {"prompts": [str(embedded / TRAIN_FILE)], "prompts_per_round": 32},
        "gate": {"heldout": str(embedded / HELDOUT_FILE)},
        "training": {"min_fresh_pairs": 8, "retry_backoff_seconds": 0},
        "daemon": {"port": 0},
    }
    for section, values in overrides.items():
        raw[section] = raw.get(section, {}) | values
    return LoopdConfig.model_validate(raw)


# -- the trainer: crashing, hanging, out of memory -----------------------------------


TRAINER_FAULTS = {
    "trainer crashes": {"target_modules": ["no_such_module"]},
    "trainer hangs": {"timeout_seconds": 1.0},
    "trainer out of memory": {"memory_budget_gb": 0.05, "batch_size": 2},
}


def trainer_fault(name: str, workdir: Path, embedded: Path) -> Row:
    """Rounds fail until the same failure twice quarantines them; healthy throughout."""
    faulty = TRAINER_FAULTS[name]
    harness = Harness(workdir / "state", embedded, training={"min_fresh_pairs": 8} | faulty)
    harness.sample_until_ready()
    row = Row(name)
    while harness.loop.ready_to_train():
        report = harness.loop.training_round()
        row.faults += 1
        row.detail.setdefault("errors", []).append(report.error.splitlines()[0][:160])
        if row.faults > 4:
            break
    row.detail["quarantined"] = harness.loop.training_blocked()
    row.detail["kinds"] = [r["error_kind"] for r in harness.store.rounds()]
    healthy = harness.sample() and harness.store.live_version() is None
    fixed = Harness(workdir / "state", embedded)  # the operator's fix: default settings
    row.recovered = row.faults if healthy and fixed.loop.ready_to_train() else 0
    return harness.finish(row)


# -- a corrupted adapter -------------------------------------------------------------


def random_adapter(base_model: Path, folder: Path, seed: int) -> Path:
    """A saved LoRA whose outputs differ from the base's (seeded noise in lora_B)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    peft.save_pretrained(folder)
    return folder


def _publish(harness: Harness, version: int, parent: int | None, seed: int) -> Any:
    registry = AdapterRegistry(harness.cfg.adapters_dir)
    staging = registry.staging_dir(version)
    random_adapter(harness.loop.inputs.base_model, staging, seed)
    published = registry.publish(staging, version=version, parent=parent, round_id=None, details={})
    harness.store.add_adapter_version(published)
    return published


def _flip_a_byte(folder: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))


def corrupt_adapter(workdir: Path, embedded: Path) -> Row:
    """A tampered candidate is refused; a tampered live version is replaced at start."""
    harness = Harness(workdir / "state", embedded)
    first = _publish(harness, 1, None, seed=1)
    second = _publish(harness, 2, 1, seed=2)
    harness.loop.deployer.deploy(first, automatic=False, reason="scenario")
    row = Row("corrupted adapter file", faults=2)
    _flip_a_byte(second.path)
    try:
        harness.loop.deployer.deploy(second, automatic=False, reason="scenario")
    except DeployFailed as refused:
        row.recovered += int(harness.store.live_version() == 1)
        row.detail["candidate"] = str(refused)
    _flip_a_byte(second.path)  # intact again: deploy it, then corrupt the live one
    harness.loop.deployer.deploy(second, automatic=False, reason="scenario")
    _flip_a_byte(second.path)
    restarted = Harness(workdir / "state", embedded)
    live = restarted.store.live_version()
    row.recovered += int(live == 1 and restarted.backend.adapters() == ["loopd-v0001"])
    row.detail["restart"] = f"live after restart: v{live}"
    row.bad_deployments = int(live == 2)
    return restarted.finish(row) if not row.bad_deployments else row


# -- the database locked by another process --------------------------------------------


@contextlib.contextmanager
def locked(db_path: Path, seconds: float) -> Iterator[None]:
    """Another process holding SQLite's write lock (``BEGIN EXCLUSIVE``) for ``seconds``."""
    code = (
        "import sqlite3, sys, time; db = sqlite3.connect(sys.argv[1], isolation_level=None);"
        "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(float(sys.argv[2]))"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(db_path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield
    finally:
        holder.kill()
        holder.wait()


def database_locked(workdir: Path, embedded: Path) -> Row:
    harness = Harness(workdir / "state", embedded)
    harness.sample()
    row = Row("database locked by another process", faults=1)
    with locked(harness.cfg.db_path, seconds=3600):
        failed = not harness.sample()  # waits the busy timeout, then fails and is counted
    row.detail["job_errors"] = harness.errors("sample")
    row.recovered = int(failed and harness.sample())
    return harness.finish(row)


# -- the disk full -------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, megabytes: int) -> Iterator[str]:
    """A tmpfs of ``megabytes`` at ``path`` ("tmpfs"), or a plain folder ("page limit")
    where this process may not mount; the scenario then caps SQLite's file instead."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
    )
    try:
        yield "tmpfs" if mounted.returncode == 0 else "page limit"
    finally:
        if mounted.returncode == 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s file system."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(descriptor, b"\0" * size):
                    pass
    finally:
        os.close(descriptor)
    return filler


def disk_full(workdir: Path, embedded: Path) -> Row:
    state = workdir / "state"
    row = Row("disk full")
    with small_disk(state, 64) as method:
        harness = Harness(state, embedded)
        harness.sample_until_ready()
        row.detail["method"] = method
        if method == "tmpfs":
            filler = _fill(state)
        else:
            pages = next(harness.store.db.query("PRAGMA page_count"))["page_count"]
            harness.store.db.execute(f"PRAGMA max_page_count = {pages}")
        row.faults += int(not harness.sample())
        row.faults += int(not harness.daemon.run_job("train", harness.loop.training_round))
        row.detail["rounds_during"] = harness.store.rounds_by_status()
        staging_left = list(harness.cfg.adapters_dir.glob(".staging-*"))
        if method == "tmpfs":
            filler.unlink()
        else:
            harness.store.db.execute("PRAGMA max_page_count = 1073741823")
        row.recovered = int(harness.sample() and not staging_left)
        row.recovered += int(harness.store.live_version() is None)
        row = harness.finish(row)
        harness.store.close()
    return row


SCENARIOS: dict[str, Callable[[Path, Path], Row]] = {
    **{name: partial(trainer_fault, name) for name in TRAINER_FAULTS},
    "corrupted adapter file": corrupt_adapter,
    "database locked": database_locked,
    "disk full": disk_full,
}


def run_faults(workdir: Path, embedded: Path, names: list[str] | None = None) -> list[Row]:
    rows = []
    for name in names or list(SCENARIOS):
        folder = workdir / name.replace(" ", "-")
        shutil.rmtree(folder, ignore_errors=True)
        started = time.monotonic()
        row = SCENARIOS[name](folder, embedded)
        row.detail["seconds"] = round(time.monotonic() - started, 1)
        rows.append(row)
    return rows

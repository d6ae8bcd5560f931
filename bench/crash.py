"""Kill -9 anywhere: the real daemon killed at random points of every stage, then checked.

Each *life* starts ``loopd run`` on the embedded model with an accelerated schedule,
waits for the log line that opens the life's target stage, waits a random share of that
stage's length more, and sends SIGKILL. Between lives the state on disk is checked
against what a crash must never do:

- every sample the daemon acknowledged (logged as ``sampled``, after its commit) is in
  the database; at most one unacknowledged batch per kill is extra (committed, not yet
  logged): a batch is never half stored;
- no pair points at a missing sample (SQLite's own ``foreign_key_check`` too);
- every version folder and the live adapter pass their checksums (``verify_folder``);
  every deployment was a gate promotion: no bad deploy;
- after the next recovery: no staging leftovers, no round still ``running`` (the
  interrupted ones carry a reason), no trainer process left from the killed daemon;
- the schedule resumes: the next life reaches its target stage, and the pairs of every
  interrupted round are trained by a later round.

Lives are forked from a ``forkserver`` that has imported loopd once, so a life costs
the daemon's start (model load, recovery), not Python's imports; the daemon and its
trainer child are real processes and the kill is a real SIGKILL. When the live adapter
reaches the held-out floor (rounds skipped), the next life starts an *episode* on a
fresh state, so training, evaluation and deployment stay reachable.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from loopd.adapters import AdapterCorrupt, verify_folder  # noqa: E402

Entry = dict[str, Any]


@dataclass(frozen=True)
class Target:
    """Where a life is killed: at a crash point (``loopd.failpoints``, the ``count``-th
    pass, drawn in 1..passes), or by the harness within ``span`` s after the first log line
    ``opens`` accepts (stages long enough for a timed kill to land inside)."""

    stage: str
    point: str | None = None
    opens: Callable[[Entry], bool] | None = None
    span: float = 0.0
    passes: int = 1  # a point's pass to crash at is drawn in 1..passes


def _msg(text: str) -> Callable[[Entry], bool]:
    return lambda entry: entry.get("msg") == text


CHEAP = [  # stages a life reaches in seconds
    Target("recover", point="recover.restored"),
    Target("sample", opens=_msg("recovery complete"), span=0.5),
    Target("sample", point="sample.stored", passes=3),
    Target("pair", point="pair.stored", passes=3),
]
COSTLY = [  # stages behind a whole training round
    Target("train", opens=_msg("training round"), span=10.0),
    Target("train", point="train.published"),
    Target("train", point="train.recorded"),
    Target("evaluate", opens=_msg("evaluating candidate"), span=1.0),
    Target("evaluate", point="evaluate.measured"),
    Target("deploy", point="gate.decided"),
    Target("deploy", point="deploy.loaded"),
    Target("deploy", point="deploy.recorded"),
]
TARGETS = [  # one cycle: three cheap kills before each costly one, every stage inside
    target
    for i, costly in enumerate(COSTLY)
    for target in (*(CHEAP[(3 * i + j) % len(CHEAP)] for j in range(3)), costly)
]
STAGE_OF = {  # the stage a log line opens: what a kill after it interrupts
    "daemon starting": "recover",
    "recovery complete": "sample",
    "paired": "sample",
    "sampled": "pair",
    "training round": "train",
    "evaluating candidate": "evaluate",
    "gate decided": "deploy",
    "round finished": "sample",
}
ROUND_STAGES = {"train", "evaluate", "deploy"}
FLOOR = "no round can be promoted"  # the reason a round is skipped at the held-out floor


def daemon_config(state: Path, prompts_per_round: int) -> str:
    """The embedded default on a schedule of seconds (TOML)."""
    return f"""state_dir = "{state}"
[sampling]
interval_seconds = 1
prompts_per_round = {prompts_per_round}
[training]
min_fresh_pairs = 16
max_fresh_pairs = 256
retry_backoff_seconds = 0
[daemon]
port = 0
train_check_seconds = 1
"""


def _run_daemon(config: Path, log_path: Path, points: str) -> None:
    """A life: ``loopd run``, its JSON log lines to ``log_path`` (forkserver child)."""
    from loopd import failpoints

    failpoints.arm(points)
    descriptor = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(descriptor, 2)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    from loopd.cli import main

    sys.exit(main(["run", "--config", str(config)]))


@dataclass
class CrashReport:
    kills: int = 0
    episodes: int = 0
    by_stage: Counter = field(default_factory=Counter)
    samples_acknowledged: int = 0
    samples_lost: int = 0
    unacknowledged_extra: int = 0
    bad_deployments: int = 0
    rounds_interrupted: int = 0
    interrupted_pairs_untrained: int = 0
    orphan_trainers: int = 0
    prompt_leaks: int = 0
    resumed: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        return {
            "scenario": "kill -9 anywhere",
            "runs": self.episodes,
            "faults": self.kills,
            "recovered": self.resumed,
            "samples_lost": self.samples_lost,
            "bad_deployments": self.bad_deployments,
            "detail": {
                "kills_by_stage": dict(self.by_stage),
                "samples_acknowledged": self.samples_acknowledged,
                "unacknowledged_extra": self.unacknowledged_extra,
                "rounds_interrupted": self.rounds_interrupted,
                "interrupted_pairs_untrained": self.interrupted_pairs_untrained,
                "orphan_trainers": self.orphan_trainers,
                "log_lines_with_prompt_text": self.prompt_leaks,
                "violations": self.violations,
                "seconds": round(self.seconds, 1),
            },
        }


class Life:
    """One daemon process, its log lines as they come."""

    def __init__(self, ctx: Any, config: Path, log_path: Path, points: str = ""):
        self.log_path = log_path
        self.lines: Queue[Entry] = Queue()
        self.seen: list[Entry] = []
        self.process = ctx.Process(target=_run_daemon, args=(config, log_path, points))
        self._stop = threading.Event()
        self._killed = False
        self.exitcode: int | None = None
        self._offset = log_path.stat().st_size if log_path.exists() else 0
        self.process.start()
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        """Tail the log file by bytes (progress bars write multi-byte characters)."""
        while not self._stop.is_set():
            if self.log_path.exists():
                with self.log_path.open("rb") as log:
                    log.seek(self._offset)
                    for line in log:
                        if not line.endswith(b"\n"):
                            break
                        self._offset += len(line)
                        start = line.find(b'{"ts"')
                        if start >= 0:
                            self.lines.put(json.loads(line[start:]))
            time.sleep(0.05)

    def wait_for(self, accept: Callable[[Entry], bool], deadline: float) -> Entry | None:
        while time.monotonic() < deadline and self.process.is_alive():
            try:
                entry = self.lines.get(timeout=0.2)
            except Empty:
                continue
            self.seen.append(entry)
            if accept(entry):
                return entry
        return None

    def drain(self) -> None:
        time.sleep(0.3)  # the follower reads what the dead process wrote last
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except Empty:
                break

    def kill(self) -> None:
        self.process.join(timeout=0)
        if self.process.exitcode is None:
            self._killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)
        self.process.join()
        self.exitcode = self.process.exitcode
        self.process.close()  # its semaphores go now, not at the harness's exit
        self.drain()
        self._stop.set()

    def crashed_itself(self) -> bool:
        """Whether the process died of SIGKILL before the harness sent one."""
        exitcode = self.exitcode if self.exitcode is not None else self.process.exitcode
        return exitcode == -signal.SIGKILL and not self._killed

    def stage(self) -> str:
        """The stage the kill interrupted: a round's (train, evaluate, deploy) while one
        was in flight, else the sampling job's (recover, sample, pair)."""
        round_stage: str | None = None
        job_stage = "recover"
        for entry in self.seen:
            stage = STAGE_OF.get(entry.get("msg", ""))
            if entry.get("msg") == "round finished":
                round_stage = None
            elif stage in ROUND_STAGES:
                round_stage = stage
            elif stage is not None:
                job_stage = stage
        return round_stage or job_stage


class Episode:
    """One state folder through many lives; the checks between them."""

    def __init__(self, root: Path, embedded: Path, prompts_per_round: int):
        self.state = root / "state"
        shutil.copytree(embedded, self.state / "embedded")
        self.config = root / "loopd.toml"
        self.config.write_text(daemon_config(self.state, prompts_per_round))
        self.log = root / "daemon.log"
        self.acknowledged: set[int] = set()
        self.kills = 0
        self.batch = prompts_per_round

    def record(self, life: Life, report: CrashReport) -> None:
        for entry in life.seen:
            if entry.get("msg") == "sampled" and entry.get("ids"):
                first, last = entry["ids"][0], entry["ids"][-1]
                report.samples_acknowledged += last - first + 1
                self.acknowledged.update(range(first, last + 1))

    def check_after_kill(self, report: CrashReport) -> None:
        db = sqlite3.connect(self.state / "loopd.db")
        try:
            stored = {row[0] for row in db.execute("SELECT id FROM samples")}
            lost = self.acknowledged - stored
            report.samples_lost += len(lost)
            extra = len(stored - self.acknowledged)
            if extra > self.kills * self.batch:
                report.violations.append(f"{extra} unacknowledged samples after {self.kills} kills")
            if list(db.execute("PRAGMA foreign_key_check")):
                report.violations.append("foreign key violations")
            dangling = db.execute(
                "SELECT COUNT(*) FROM pairs WHERE sample_id NOT IN (SELECT id FROM samples)"
            ).fetchone()[0]
            if dangling:
                report.violations.append(f"{dangling} pairs point at missing samples")
            report.bad_deployments += self._bad_deployments(db, report)
        finally:
            db.close()

    def _bad_deployments(self, db: sqlite3.Connection, report: CrashReport) -> int:
        """Deployments no gate promoted, and versions (the live one above all) not intact."""
        promoted = {
            row[0]
            for row in db.execute("SELECT candidate_version FROM decisions WHERE promote = 1")
        }
        deployed = [
            row[0] for row in db.execute("SELECT version FROM events WHERE kind = 'deployed'")
        ]
        bad = sum(1 for version in deployed if version not in promoted)
        for folder in sorted((self.state / "adapters").glob("v[0-9][0-9][0-9][0-9]")):
            try:
                verify_folder(folder)
            except AdapterCorrupt as error:
                report.violations.append(f"half-written or corrupt version: {error}")
        live = db.execute(
            "SELECT version FROM events WHERE kind IN ('deployed', 'rolled_back')"
            " ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if live and live[0]:
            try:
                verify_folder(self.state / "adapters" / f"v{live[0]:04d}")
            except AdapterCorrupt:
                bad += 1
        return bad

    def check_after_recovery(self, report: CrashReport) -> None:
        leftovers = list((self.state / "adapters").glob(".staging-*"))
        if leftovers:
            report.violations.append(f"staging leftovers after recovery: {leftovers}")
        db = sqlite3.connect(self.state / "loopd.db")
        try:
            unexplained = db.execute(
                "SELECT COUNT(*) FROM rounds WHERE status = 'interrupted' AND error IS NULL"
            ).fetchone()[0]
            if unexplained:
                report.violations.append(f"{unexplained} interrupted rounds without a reason")
        finally:
            db.close()

    def check_logs(self, report: CrashReport, embedded: Path) -> None:
        """No log line carries a prompt's words (logs go to aggregators; prompts are data)."""
        texts = [
            json.loads(line)["prompt"]
            for line in (embedded / "train.jsonl").read_text().splitlines()
            if line.strip()
        ]
        lines = self.log.read_text(errors="replace").splitlines()
        report.prompt_leaks += sum(1 for line in lines if any(t in line for t in texts))

    def check_at_end(self, report: CrashReport) -> None:
        """Every interrupted round's pairs were trained by a later round that finished."""
        db = sqlite3.connect(self.state / "loopd.db")
        try:
            rounds = db.execute("SELECT id, status, started_at FROM rounds ORDER BY id").fetchall()
            report.rounds_interrupted += sum(
                1 for _, status, _ in rounds if status == "interrupted"
            )
            finished = [r for r in rounds if r[1] not in ("interrupted", "running", "failed")]
            for round_id, status, started in rounds:
                later = [r for r in finished if r[0] > round_id]
                if status != "interrupted" or not later:
                    continue
                untrained = db.execute(
                    "SELECT COUNT(*) FROM pairs WHERE created_at < ? AND trained_round IS NULL",
                    [started],
                ).fetchone()[0]
                report.interrupted_pairs_untrained += untrained
        finally:
            db.close()


def orphan_trainers(state: Path) -> list[int]:
    """Trainer processes whose job lives under ``state`` (none may outlive a kill long)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if b"loopd.backends.trl_dpo" in command and str(state).encode() in command:
            found.append(int(proc.name))
    return found


def wait_orphans_gone(state: Path, deadline_s: float = 60.0) -> int:
    """How many trainers were still there once the daemon died; waits for them to exit."""
    first = len(orphan_trainers(state))
    deadline = time.monotonic() + deadline_s
    while orphan_trainers(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(orphan_trainers(state)) if first else 0


def run_crash(
    *,
    kills: int,
    workdir: Path,
    embedded: Path,
    seed: int = 0,
    prompts_per_round: int = 16,
    stage_deadline_s: float = 300.0,
    on_kill: Callable[[int, str], None] | None = None,
) -> CrashReport:
    """``kills`` SIGKILLs of the daemon, cycling through every stage; the checks between."""
    rng = random.Random(seed)
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["loopd.cli", "loopd.cli.run", "loopd.backends.local"])
    report = CrashReport()
    started = time.monotonic()
    episode = _new_episode(workdir, embedded, prompts_per_round, report)
    for index in range(kills):
        target = TARGETS[index % len(TARGETS)]
        point = f"{target.point}:{rng.randint(1, target.passes)}" if target.point else ""
        life = Life(ctx, episode.config, episode.log, point)
        deadline = time.monotonic() + stage_deadline_s
        if _reach(life, target, episode, report, deadline) and target.point is None:
            time.sleep(rng.uniform(0, target.span))
        life.kill()
        episode.kills += 1
        report.kills += 1
        stage = target.stage if life.crashed_itself() else life.stage()
        report.by_stage[stage] += 1
        report.orphan_trainers += wait_orphans_gone(episode.state)
        episode.record(life, report)
        episode.check_after_kill(report)
        if on_kill is not None:
            on_kill(index + 1, f"{stage} ({target.point or 'timed'})")
        if _at_floor(life):
            episode = _finish_and_renew(episode, workdir, embedded, prompts_per_round, report)
    _final_life(ctx, episode, report, stage_deadline_s)
    episode.check_logs(report, embedded)
    report.seconds = time.monotonic() - started
    return report


def _reach(
    life: Life, target: Target, episode: Episode, report: CrashReport, deadline: float
) -> bool:
    """Wait until the life crashed at its point, or reached its timed target's opening
    line (True); False at the held-out floor or the deadline."""
    if target.point == "recover.restored":
        return life.wait_for(lambda _: False, deadline) is None and life.crashed_itself()
    recovered = life.wait_for(_msg("recovery complete"), deadline)
    if recovered is None:
        if not life.crashed_itself():
            report.violations.append(f"the daemon did not recover (life {report.kills + 1})")
        return False
    episode.check_after_recovery(report)
    report.resumed += 1
    opens = target.opens or (lambda _: False)
    if opens(recovered):
        return True
    entry = life.wait_for(lambda e: opens(e) or _floor(e), deadline)
    return entry is not None and opens(entry)


def _floor(entry: Entry) -> bool:
    return FLOOR in str(entry.get("reason", ""))


def _at_floor(life: Life) -> bool:
    return any(_floor(entry) for entry in life.seen)


def _new_episode(workdir: Path, embedded: Path, batch: int, report: CrashReport) -> Episode:
    report.episodes += 1
    return Episode(workdir / f"episode-{report.episodes:02d}", embedded, batch)


def _finish_and_renew(
    episode: Episode, workdir: Path, embedded: Path, batch: int, report: CrashReport
) -> Episode:
    episode.check_at_end(report)
    episode.check_logs(report, embedded)
    return _new_episode(workdir, embedded, batch, report)


def _final_life(ctx: Any, episode: Episode, report: CrashReport, deadline_s: float) -> None:
    """The last life is not killed mid-stage: it must recover and train a round again."""
    life = Life(ctx, episode.config, episode.log)
    deadline = time.monotonic() + deadline_s
    if life.wait_for(_msg("recovery complete"), deadline) is None:
        report.violations.append("the daemon did not recover after the last kill")
    else:
        episode.check_after_recovery(report)
        report.resumed += 1
        finished = life.wait_for(
            lambda e: e.get("msg") == "round finished" or FLOOR in str(e.get("reason", "")),
            deadline,
        )
        if finished is None:
            report.violations.append("no round finished after the last recovery")
    life.kill()
    episode.record(life, report)
    episode.check_after_kill(report)
    episode.check_at_end(report)

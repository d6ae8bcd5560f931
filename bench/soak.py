"""Soak: the daemon on the embedded model, accelerated, for many rounds; what grows.

``loopd run`` samples every second, trains whenever 16 fresh pairs exist and applies
retention every few seconds with a retention of a minute, so hours of production go by
in minutes. The embedded model stops looping after two rounds; whenever the daemon
skips a round at that floor the soak rolls it back to the base model through the admin
API (as an operator would), so rounds, promotions, swaps and rollbacks go on. Every
``--every`` seconds the daemon's resident memory, open files, threads
and database size (with its WAL) are read from ``/proc`` and the file system. Reported:
the first and last reading after warm-up, the peak, and growth per hour fitted over the
run (least squares, scipy), which for a daemon meant to run for months must be flat.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from scipy import stats

WARM_UP_S = 60.0  # model load, first rounds: not growth


TOKEN = "soak-admin-token-0123456789"
FLOOR = "no round can be promoted"


def soak_config(state: Path) -> str:
    return f"""state_dir = "{state}"
[sampling]
interval_seconds = 1
prompts_per_round = 16
[training]
min_fresh_pairs = 16
retry_backoff_seconds = 0
[gate]
refresh_share = 0.25
[daemon]
port = 0
admin_token = "{TOKEN}"
train_check_seconds = 2
retention_days = 0.0007
retention_interval_seconds = 5
"""


@dataclass
class Reading:
    at: float
    rss_mb: float
    open_files: int
    threads: int
    db_mb: float


@dataclass
class SoakReport:
    seconds: float
    readings: list[Reading] = field(default_factory=list)
    rounds: int = 0
    rollbacks: int = 0
    exit_code: int | None = None

    def summary(self) -> dict[str, Any]:
        warm = [r for r in self.readings if r.at >= self.readings[0].at + WARM_UP_S]
        warm = warm if len(warm) >= 3 else self.readings

        def growth(value: Callable[[Reading], float]) -> float:
            fit = stats.linregress([r.at for r in warm], [value(r) for r in warm])
            return fit.slope * 3600

        metrics = {
            "rss_mb": lambda r: r.rss_mb,
            "open_files": lambda r: r.open_files,
            "threads": lambda r: r.threads,
            "db_mb": lambda r: r.db_mb,
        }
        return {
            "seconds": round(self.seconds, 1),
            "rounds": self.rounds,
            "rollbacks": self.rollbacks,
            "readings": len(self.readings),
            **{
                name: {
                    "first": round(value(warm[0]), 2),
                    "last": round(value(warm[-1]), 2),
                    "peak": round(max(value(r) for r in warm), 2),
                    "per_hour": round(growth(value), 2),
                }
                for name, value in metrics.items()
            },
        }


def _roll_back_to_base(state: Path) -> int:
    """Roll the live adapter back until the base model serves; how many steps it took."""
    address = json.loads((state / "daemon.json").read_text())
    url = f"http://{address['host']}:{address['port']}/admin/adapters/rollback"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    steps = 0
    while httpx.post(url, headers=headers, timeout=300).status_code == 200:
        steps += 1
    return steps


def _read(pid: int, state: Path, started: float) -> Reading:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    database = sum(p.stat().st_size for p in state.glob("loopd.db*"))
    return Reading(
        at=time.monotonic() - started,
        rss_mb=int(status["VmRSS"].split()[0]) / 1024,
        open_files=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
        db_mb=database / 2**20,
    )


def run_soak(
    *,
    seconds: float,
    workdir: Path,
    embedded: Path,
    every: float = 5.0,
    on_reading: Callable[[Reading], None] | None = None,
) -> SoakReport:
    """Run the daemon for ``seconds`` and read its footprint every ``every`` seconds."""
    state = workdir / "state"
    shutil.copytree(embedded, state / "embedded")
    config = workdir / "loopd.toml"
    config.write_text(soak_config(state))
    log = (workdir / "daemon.log").open("w")
    command = [sys.executable, "-m", "loopd", "run", "--config", str(config)]
    daemon = subprocess.Popen(command, stderr=log, stdout=log)
    report = SoakReport(seconds=seconds)
    started = time.monotonic()
    floors = 0
    try:
        while time.monotonic() - started < seconds and daemon.poll() is None:
            time.sleep(every)
            seen = (workdir / "daemon.log").read_text(errors="replace").count(FLOOR)
            if seen > floors:
                floors = seen
                report.rollbacks += _roll_back_to_base(state)
            if (state / "loopd.db").exists() and daemon.poll() is None:
                reading = _read(daemon.pid, state, started)
                report.readings.append(reading)
                if on_reading is not None:
                    on_reading(reading)
    finally:
        daemon.terminate()
        report.exit_code = daemon.wait(timeout=120)
        log.close()
    report.rounds = (workdir / "daemon.log").read_text().count('"round finished"')
    return report

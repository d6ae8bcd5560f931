"""The reliability suite drives the harnesses in ``bench/`` (one implementation for the
benchmark table and the tests): ``bench/crash.py`` and ``bench/faults.py``."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

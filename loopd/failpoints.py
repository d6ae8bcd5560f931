"""Crash points: where the reliability suite kills loopd with SIGKILL, on purpose.

A crash between two writes is the case recovery exists for, and a timed ``kill -9``
rarely lands in a window of microseconds (between an adapter's rename and its database
row, say). ``LOOPD_FAILPOINTS="deploy.recorded:2"`` makes the process kill itself with
SIGKILL the 2nd time it passes ``reach("deploy.recorded")``: a real kill -9, exactly
there. Unset, as in production, ``reach`` is one dictionary lookup.

Points (stage.moment): ``recover.restored``, ``sample.stored``, ``pair.stored``,
``train.published``, ``train.recorded``, ``evaluate.measured``, ``gate.decided``, ``deploy.loaded``,
``deploy.recorded``.
"""

from __future__ import annotations

import os
import signal

ENV = "LOOPD_FAILPOINTS"


def _armed(spec: str) -> dict[str, int]:
    points = {}
    for item in filter(None, spec.split(",")):
        name, _, count = item.partition(":")
        points[name.strip()] = int(count or 1)
    return points


_ARMED = _armed(os.environ.get(ENV, ""))


def arm(spec: str) -> None:
    """Arm points as ``$LOOPD_FAILPOINTS`` would (for a process forked after import)."""
    _ARMED.clear()
    _ARMED.update(_armed(spec))


def reach(name: str) -> None:
    """Kill this process with SIGKILL if ``name`` is armed and its count is reached."""
    if name not in _ARMED:
        return
    _ARMED[name] -= 1
    if _ARMED[name] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)

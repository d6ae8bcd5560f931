"""What loopd is doing, read from the database alone.

Both ``GET /status`` and ``loopd status`` use this, so the CLI works against a live
daemon's state folder (WAL lets it read while the daemon writes) or a stopped one.
"""

from __future__ import annotations

import json
from typing import Any

from loopd.store import Store


def snapshot(store: Store, *, rounds: int = 10, events: int = 20) -> dict[str, Any]:
    return {
        "live_version": store.live_version(),
        "counts": store.counts(),
        "degeneration_rate_recent": store.recent_degeneration_rate(),
        "rounds": store.rounds(rounds),
        "events": [_decoded(e) for e in store.events(events)],
    }


def _decoded(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "payload": json.loads(event["payload"] or "{}")}


def render(status: dict[str, Any]) -> str:
    """A short human summary for a terminal."""
    counts = status["counts"]
    live = status["live_version"]
    lines = [
        f"live adapter      {'base model' if live is None else f'v{live:04d}'}",
        f"samples           {counts['samples']} ({counts['degenerate_samples']} degenerate)",
        f"recent loop rate  {status['degeneration_rate_recent']:.1%}",
        f"pairs             {counts['pairs']} ({counts['fresh_pairs']} not yet trained)",
        f"training rounds   {counts['rounds']}",
    ]
    for r in status["rounds"][:5]:
        lines.append(
            f"  round {r['id']:>3}  {r['status']:<13} candidate={r['candidate_version']}"
            f"  pairs={r['fresh_pairs']}+{r['replay_pairs']}  {r['decision'] or r['error'] or ''}"[
                :160
            ]
        )
    return "\n".join(lines)

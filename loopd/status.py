"""What loopd is doing, read from the database alone.

Both ``GET /status`` and ``loopd status`` use this, so the CLI works against a live
daemon's state folder (WAL lets it read while the daemon writes) or a stopped one.
"""

from __future__ import annotations

import json
from typing import Any

from loopd.adapters import label
from loopd.canary import open_canary
from loopd.store import Store


def snapshot(store: Store, *, rounds: int = 10, events: int = 20) -> dict[str, Any]:
    recent = store.rounds(rounds)
    decisions = store.decisions(limit=1)
    return {
        "live_version": store.live_version(),
        "pinned_version": store.pinned_version(),
        "candidate": _candidate(store, recent),
        "last_decision": decisions[0] if decisions else None,
        "counts": store.counts(),
        "degeneration_rate_recent": store.recent_degeneration_rate(),
        "rates_by_kind": store.rates_by_kind(),
        "rounds": recent,
        "events": [_decoded(e) for e in store.events(events)],
    }


def _candidate(store: Store, recent: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The adapter on its way in: a canary answering traffic, or a round training."""
    canary = open_canary(store)
    if canary is not None:
        return {"round": canary.round_id, "version": canary.version.version, "stage": "canary"}
    running = next((r for r in recent if r["status"] == "running"), None)
    if running is None:
        return None
    return {"round": running["id"], "version": None, "stage": "training"}


def _decoded(event: dict[str, Any]) -> dict[str, Any]:
    return {**event, "payload": json.loads(event["payload"] or "{}")}


def render(status: dict[str, Any]) -> str:
    """A short human summary for a terminal."""
    counts = status["counts"]
    live = status["live_version"]
    lines = [
        f"live adapter      {label(live)}",
        f"samples           {counts['samples']} ({counts['degenerate_samples']} degenerate)",
        f"recent loop rate  {status['degeneration_rate_recent']:.1%}",
        f"pairs             {counts['pairs']} ({counts['fresh_pairs']} not yet trained)",
        f"training rounds   {counts['rounds']}",
    ]
    if status["pinned_version"] is not None:
        pinned = label(status["pinned_version"])
        lines.insert(1, f"pinned            {pinned} (deployments frozen)")
    candidate = status["candidate"]
    if candidate:
        what = label(candidate["version"]) if candidate["version"] else "a new adapter"
        lines.append(f"candidate         {what}, round {candidate['round']} ({candidate['stage']})")
    kinds = status["rates_by_kind"]
    if kinds:
        lines.append("loop rate by kind " + ", ".join(
            f"{kind} {row['rate']:.1%} ({row['samples']})" for kind, row in kinds.items()
        ))  # fmt: skip
    lines.extend(_decision_lines(status["last_decision"]))
    for r in status["rounds"][:5]:
        lines.append(
            f"  round {r['id']:>3}  {r['status']:<13} candidate={r['candidate_version']}"
            f"  pairs={r['fresh_pairs']}+{r['replay_pairs']}  {r['decision'] or r['error'] or ''}"[
                :160
            ]
        )
    return "\n".join(lines)


def _decision_lines(decision: dict[str, Any] | None) -> list[str]:
    if decision is None:
        return []
    version = decision["candidate_version"]
    verdict = "promote" if decision["promote"] else "keep live"
    lines = [f"last decision     {decision['source']} on {label(version)}: {verdict}"]
    for check in decision["checks"] or []:
        lines.append(
            f"  {'ok  ' if check['passed'] else 'FAIL'} {check['name']:<16} {check['detail']}"[:200]
        )
    return lines

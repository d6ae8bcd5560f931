"""What loopd is doing, read from the database alone.

Both ``GET /status`` and ``loopd status`` use this, so the CLI works against a live
daemon's state folder (WAL lets it read while the daemon writes) or a stopped one.
"""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.table import Table

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
        "last_training": store.last_trained_round(),
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


def render(status: dict[str, Any]) -> Group:
    """What ``loopd status`` prints: a summary, the daemon's jobs, the last decision, rounds.

    ``status`` is ``snapshot``'s document, or the daemon's ``/status`` (which adds a
    ``daemon`` part: pause, jobs and their next runs, the config generation).
    """
    parts: list[Any] = [_summary(status)]
    if status.get("daemon"):
        parts.append(_jobs(status["daemon"]))
    if status["last_decision"]:
        parts.append(_decision(status["last_decision"]))
    if status["rounds"]:
        parts.append(_rounds(status["rounds"]))
    return Group(*parts)


def _summary(status: dict[str, Any]) -> Table:
    counts = status["counts"]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("live adapter", label(status["live_version"]))
    if status["pinned_version"] is not None:
        table.add_row("pinned", f"{label(status['pinned_version'])} (deployments frozen)")
    candidate = status["candidate"]
    if candidate:
        what = label(candidate["version"]) if candidate["version"] else "a new adapter"
        table.add_row("candidate", f"{what}, round {candidate['round']} ({candidate['stage']})")
    table.add_row("samples", f"{counts['samples']} ({counts['degenerate_samples']} degenerate)")
    table.add_row("recent loop rate", f"{status['degeneration_rate_recent']:.1%}")
    kinds = status["rates_by_kind"]
    if kinds:
        table.add_row("loop rate by kind", ", ".join(
            f"{kind} {row['rate']:.1%} ({row['samples']})" for kind, row in kinds.items()
        ))  # fmt: skip
    table.add_row("pairs", f"{counts['pairs']} ({counts['fresh_pairs']} not yet trained)")
    table.add_row("training rounds", str(counts["rounds"]))
    trained = status.get("last_training")
    if trained:
        table.add_row(f"round {trained['id']} (TRL)", _trl_line(trained["train_metrics"]))
    return table


def _trl_line(metrics: dict[str, Any]) -> str:
    """The last logged DPO metrics of a round, as an operator reads them."""
    shown = (("loss", "loss"), ("rewards_margins", "margin"), ("rewards_accuracies", "accuracy"),
             ("logps_chosen", "logp chosen"), ("logps_rejected", "logp rejected"))  # fmt: skip
    return ", ".join(f"{name} {metrics[key]:.3f}" for key, name in shown if key in metrics)


def _jobs(daemon: dict[str, Any]) -> Table:
    state = "[bold red]paused[/] (POST /admin/resume)" if daemon["paused"] else "running"
    title = f"jobs: {state}; config generation {daemon['config_generation']}"
    table = Table("job", "next run", "schedule", title=title, title_justify="left")
    for job in daemon["jobs"]:
        next_run = job["next_run_time"] or ("paused" if daemon["paused"] else "-")
        table.add_row(job["id"], str(next_run)[:19], job["trigger"])
    return table


def _decision(decision: dict[str, Any]) -> Table:
    verdict = "promote" if decision["promote"] else "keep live"
    title = (
        f"last decision: {decision['source']} on {label(decision['candidate_version'])}: {verdict}"
    )
    table = Table("", "check", "detail", title=title, title_justify="left")
    for check in decision["checks"] or []:
        mark = "[green]ok[/]" if check["passed"] else "[bold red]FAIL[/]"
        table.add_row(mark, check["name"], check["detail"])
    return table


def _rounds(rounds: list[dict[str, Any]]) -> Table:
    table = Table("round", "status", "candidate", "pairs", "decision or error", title="rounds",
                  title_justify="left")  # fmt: skip
    for r in rounds[:5]:
        candidate = label(r["candidate_version"]) if r["candidate_version"] else "-"
        pairs = f"{r['fresh_pairs'] or 0}+{r['replay_pairs'] or 0}"
        table.add_row(
            str(r["id"]), r["status"], candidate, pairs, r["decision"] or r["error"] or ""
        )
    return table

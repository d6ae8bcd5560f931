"""What an operator can do to the adapters: one implementation behind two doors.

``loopd adapters`` talks to a running daemon over its HTTP endpoints (the daemon holds
the serving backend, so only it can load an adapter and probe it before the switch);
the daemon's handlers call this module. With no daemon running, the CLI calls it
directly on the database with no serving attached: the transition is recorded and the
daemon's start (``Deployer.restore``) loads whatever the store says is live.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loopd.adapters import label
from loopd.deploy import Deployer, DeployRefused
from loopd.store import Store


class UnknownVersion(LookupError):
    """No adapter version with that number exists."""


@dataclass(frozen=True)
class Outcome:
    message: str
    live_version: int | None


def listing(store: Store) -> list[dict[str, Any]]:
    """Every adapter version with its state, newest first."""
    live, pinned = store.live_version(), store.pinned_version()
    rolled_back = store.rolled_back_versions()
    rounds = {r["id"]: r for r in store.rounds(limit=100_000)}
    rows = []
    for version in reversed(store.adapter_versions()):
        round_row = rounds.get(version.round_id) or {}
        states = [
            name
            for name, holds in (
                ("live", version.version == live),
                ("pinned", version.version == pinned),
                ("rolled back", version.version in rolled_back),
                ("pruned", not version.path.exists()),
            )
            if holds
        ]
        rows.append(
            {
                "version": version.version,
                "name": version.name,
                "parent": version.parent,
                "round": version.round_id,
                "created_at": version.created_at,
                "state": ", ".join(states) or round_row.get("status") or "published",
                "decision": round_row.get("decision") or round_row.get("error"),
                "path": str(version.path),
            }
        )
    return rows


def show(store: Store, version: int) -> dict[str, Any]:
    """One version: its listing row, every decision about it, and its events."""
    row = next((r for r in listing(store) if r["version"] == version), None)
    if row is None:
        raise UnknownVersion(f"no adapter version {version}; `loopd adapters list` shows them")
    events = [e for e in store.events(limit=1000) if e["version"] == version]
    return {**row, "decisions": store.decisions(version=version), "events": events}


def promote(deployer: Deployer, version: int) -> Outcome:
    target = _version(deployer, version)
    deployer.deploy(target, automatic=False, reason="promoted by the operator")
    return Outcome(f"{target.name} is live", target.version)


def rollback(deployer: Deployer) -> Outcome:
    parent = deployer.rollback(reason="rolled back by the operator")
    name = "the base model" if parent is None else parent.name
    return Outcome(f"rolled back: {name} is live", None if parent is None else parent.version)


def pin(deployer: Deployer, version: int) -> Outcome:
    target = _version(deployer, version)
    deployer.pin(target)
    return Outcome(
        f"{target.name} is live and pinned: no deployment or rollback until `loopd adapters unpin`",
        target.version,
    )


def unpin(deployer: Deployer) -> Outcome:
    was = deployer.unpin()
    message = "nothing was pinned" if was is None else f"{label(was)} unpinned"
    return Outcome(message, deployer.store.live_version())


def _version(deployer: Deployer, version: int):
    found = deployer.store.adapter_version(version)
    if found is None:
        raise UnknownVersion(f"no adapter version {version}; `loopd adapters list` shows them")
    return found


ACTIONS = {"promote": promote, "pin": pin}  # verbs that take a version
PLAIN_ACTIONS = {"rollback": rollback, "unpin": unpin}
__all__ = ["DeployRefused", "Outcome", "UnknownVersion", "listing", "show"]

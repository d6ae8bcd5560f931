"""The canary: a candidate that passed the held-out gate answers real sampling first.

Held-out prompts are a fixed, small set; the prompts the sampler draws are closer to what
serving sees. With ``gate.canary_share`` set, a candidate that passed the gate is not
deployed at once: it stays loaded, its round stays open (status ``canary``), and each
sampling job sends that share of its prompts to it, the rest to the live adapter. Once
the candidate has answered ``gate.canary_samples`` of them, its loop rate is compared
with the live adapter's over the same jobs (the watch's test: a rise above
``deploy.watch_max_rise`` that is significant rejects it); then it is deployed or
discarded and the round ends. Events ``canary_started`` / ``canary_ended`` bracket it,
so a restarted daemon resumes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from loopd.config import LoopdConfig
from loopd.store import Store
from loopd.types import AdapterVersion
from loopd.watch import WatchVerdict, verdict

STARTED, ENDED = "canary_started", "canary_ended"


@dataclass(frozen=True)
class Canary:
    """An open canary: the candidate, its round, and where its samples start."""

    version: AdapterVersion
    round_id: int
    parent: int | None
    from_sample: int


def open_canary(store: Store) -> Canary | None:
    event = store.last_event((STARTED, ENDED))
    if event is None or event["kind"] != STARTED:
        return None
    return Canary(
        version=store.adapter_version(event["version"]),
        round_id=event["round_id"],
        parent=event["payload"]["parent"],
        from_sample=event["payload"]["from_sample"],
    )


def start_canary(store: Store, version: AdapterVersion, round_id: int) -> Canary:
    canary = Canary(version, round_id, version.parent, store.max_sample_id())
    store.record_event(
        STARTED, version=version.version, round_id=round_id,
        parent=canary.parent, from_sample=canary.from_sample,
    )  # fmt: skip
    return canary


def canary_share(prompts: int, cfg: LoopdConfig) -> int:
    """How many of a sampling job's prompts go to the candidate (at least one)."""
    return max(1, round(prompts * cfg.gate.canary_share))


def judge_canary(
    store: Store, canary: Canary, *, candidate: str, live: str | None, cfg: LoopdConfig
) -> WatchVerdict | None:
    """The canary's verdict once the candidate answered enough (None: keep sampling)."""
    answered = store.loop_counts(candidate, after_id=canary.from_sample)
    if answered[1] < cfg.gate.canary_samples:
        return None
    baseline = store.loop_counts(live, after_id=canary.from_sample)
    if baseline[1] == 0:
        return None  # the live adapter must answer some of the same jobs
    return verdict(
        baseline,
        answered,
        max_rise=cfg.deploy.watch_max_rise,
        significance=cfg.gate.significance,
        labels=("from the live adapter", "from the candidate"),
    )


def record_verdict(store: Store, canary: Canary, judged: WatchVerdict, outcome: str) -> None:
    reason = "canary " + judged.reason
    store.record_decision(
        "canary",
        not judged.rollback,
        reason,
        round_id=canary.round_id,
        candidate_version=canary.version.version,
        live_version=canary.parent,
        checks=[asdict(judged.check)],
    )
    end(store, canary, outcome, reason)


def end(store: Store, canary: Canary, outcome: str, reason: str, **extra: Any) -> None:
    store.record_event(
        ENDED, version=canary.version.version, round_id=canary.round_id,
        outcome=outcome, reason=reason, **extra,
    )  # fmt: skip

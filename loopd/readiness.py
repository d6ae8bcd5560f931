"""Whether a training round is worth running now, and if not, why (logged once).

A round costs minutes to hours of training; these are the cases where it would only be
thrown away: a canary of the last candidate is still deciding; the same failure already
happened twice with the same settings and pairs; or the live adapter loops on too few
held-out prompts for any candidate to be shown significantly better.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from itertools import takewhile

from loopd.canary import Canary
from loopd.config import TrainingConfig
from loopd.stats import discordant_needed
from loopd.store import Store
from loopd.types import EvalReport

REPEATED_FAILURES = 2  # the same failure this many times in a row stops retries
MAX_BACKOFF_SECONDS = 3600.0


def canary_running(canary: Canary | None) -> str | None:
    if canary is None:
        return None
    return f"the canary of {canary.version.name} (round {canary.round_id}) is still running"


def attempt_key(store: Store, cfg: TrainingConfig) -> str:
    """What a round would try: its settings, the live adapter and the fresh pairs."""
    fresh = [p.id for p in store.fresh_pairs(cfg.max_fresh_pairs)]
    what = {
        "training": cfg.model_dump(mode="json"),
        "live": store.live_version(),
        "fresh": sorted(fresh),
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def repeated_failure(store: Store, key: str, cfg: TrainingConfig, now: float) -> str | None:
    """Why the next round would only repeat a failure, or None when it may run.

    Failures in a row on the same settings, live adapter and fresh pairs (``key``):

    - the same kind twice (an out-of-memory at one pair per micro-batch, every pair too
      long, LoRA targets the model lacks) would fail a third time: it waits until one of
      those changes, by config or by new pairs;
    - ``training.max_failed_attempts`` of any kind: quarantined the same way;
    - otherwise the next try waits ``training.retry_backoff_seconds``, doubled per failure
      (capped at an hour), so a flaky failure is retried without hammering the machine.
    """
    recent = store.failures_of(key, limit=max(REPEATED_FAILURES, cfg.max_failed_attempts))
    run = list(takewhile(lambda failure: failure[0] is not None, recent))
    kinds = [kind for kind, _ in run]
    if len(kinds) >= REPEATED_FAILURES and len(set(kinds[:REPEATED_FAILURES])) == 1:
        return (
            f"quarantined: the last {REPEATED_FAILURES} rounds on these pairs and settings "
            f"failed the same way ({kinds[0]}); change the training settings or wait for new "
            "pairs"
        )
    if len(kinds) >= cfg.max_failed_attempts:
        return (
            f"quarantined: {len(kinds)} rounds in a row on these pairs and settings failed "
            f"({', '.join(kinds)}); change the training settings or wait for new pairs"
        )
    if kinds:
        wait = min(cfg.retry_backoff_seconds * 2 ** (len(kinds) - 1), MAX_BACKOFF_SECONDS)
        retry_at = run[0][1] + wait
        if now < retry_at:
            when = datetime.fromtimestamp(retry_at, UTC).isoformat(timespec="seconds")
            return f"backing off after {len(kinds)} failed round(s) ({kinds[0]}): retry at {when}"
    return None


def at_floor(live: EvalReport, significance: float) -> str | None:
    """Why no candidate could be shown better than the live adapter, or None.

    A candidate must fix at least ``discordant_needed`` held-out prompts to reach the
    gate's significance; a live adapter that loops on fewer cannot be beaten on this
    held-out set, so a round would train only to be rejected.
    """
    loops = sum(a.degenerate for a in live.answers)
    needed = discordant_needed(significance)
    if loops >= needed:
        return None
    return (
        f"the live adapter loops on {loops} of {live.prompts} held-out prompts; at "
        f"gate.significance={significance} a candidate must fix at least {needed}, so no "
        "round can be promoted on this held-out set (add held-out prompts that loop, or "
        "set gate.refresh_share, to measure further gains)"
    )

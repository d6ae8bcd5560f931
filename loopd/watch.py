"""Watch a deployment: roll back to the parent when the live loop rate rises after a swap.

The gate judged the candidate on held-out prompts; the answers the live adapter gives
afterwards are the real test. Each deployment records the outgoing adapter's loop
counts over its last ``deploy.watch_samples`` sampled answers. Once the new adapter has
answered as many, its rate is compared with that baseline: a rise above
``deploy.watch_max_rise`` that is significant at ``gate.significance`` (one-sided Fisher
exact: before and after are independent groups of prompts) rolls back to the parent and
records why. Either way the verdict is a decision in the store and the watch ends.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from loopd.config import LoopdConfig
from loopd.deploy import Deployer, DeployRefused
from loopd.stats import format_p, rate_rise_p_value
from loopd.types import Check

log = logging.getLogger(__name__)
OPEN, ENDED = "deployed", "watch_ended"


@dataclass(frozen=True)
class WatchVerdict:
    rollback: bool
    reason: str
    check: Check


def verdict(
    before: tuple[int, int],
    after: tuple[int, int],
    *,
    max_rise: float,
    significance: float,
    labels: tuple[str, str] = ("before", "after the deployment"),
) -> WatchVerdict:
    """Reject iff the rate after rose by more than ``max_rise``, significantly.

    ``before`` and ``after`` are ``(degenerate, samples)``; ``labels`` name them.
    """
    rate_before, rate_after = before[0] / before[1], after[0] / after[1]
    rise = rate_after - rate_before
    p_value = rate_rise_p_value(after, before)
    rollback = rise > max_rise and p_value <= significance
    detail = (
        f"loop rate {rate_after:.3f} ({after[0]}/{after[1]} samples) {labels[1]} vs "
        f"{rate_before:.3f} ({before[0]}/{before[1]}) {labels[0]}: rise {rise:+.3f}, "
        f"Fisher p = {format_p(p_value)}"
    )
    check = Check(
        "live_rate", not rollback, detail, rise, None, f"<= +{max_rise} or p > {significance}"
    )
    return WatchVerdict(rollback, ("loop rate rose: " if rollback else "held: ") + detail, check)


def watch_deployment(deployer: Deployer, cfg: LoopdConfig) -> WatchVerdict | None:
    """Judge the latest deployment once enough answers came from it (None: not yet)."""
    store = deployer.store
    event = store.last_event((OPEN, ENDED))
    if event is None or event["kind"] != OPEN or "before" not in event["payload"]:
        return None
    version = store.adapter_version(event["version"])
    before = tuple(event["payload"]["before"])
    after = store.loop_counts(
        deployer.serving_name(version), after_id=event["payload"]["watch_from"]
    )
    if after[1] < cfg.deploy.watch_samples:
        return None
    if before[1] == 0:
        store.record_event(ENDED, version=version.version, outcome="no baseline")
        return None
    judged = verdict(
        before, after, max_rise=cfg.deploy.watch_max_rise, significance=cfg.gate.significance
    )
    store.record_decision(
        "watch",
        not judged.rollback,
        judged.reason,
        candidate_version=version.version,
        live_version=version.parent,
        checks=[asdict(judged.check)],
    )
    outcome = "passed"
    if judged.rollback:
        outcome = _roll_back(deployer, judged.reason)
    store.record_event(ENDED, version=version.version, outcome=outcome, reason=judged.reason)
    log.info("deployment watched", extra={"version": version.version, "outcome": outcome})
    return judged


def _roll_back(deployer: Deployer, reason: str) -> str:
    try:
        deployer.rollback(reason=reason, automatic=True)
    except DeployRefused as refused:
        log.warning("watch wanted a rollback", extra={"refused": str(refused)})
        return f"rollback refused: {refused}"
    return "rolled_back"

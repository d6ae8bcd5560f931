"""Prune old adapter version folders, keeping what a rollback or an open decision needs.

Every round publishes a version folder; over months they add up. With
``training.keep_versions`` set, after each round the oldest folders beyond that count
are removed — never the live version, its parent (a rollback loads it), a pinned one,
or a candidate whose canary is still open. The database keeps every version's row and
lineage; a pruned version is marked by a ``pruned`` event and cannot be deployed again.
"""

from __future__ import annotations

import logging

from loopd.adapters import AdapterRegistry
from loopd.canary import open_canary
from loopd.store import Store

log = logging.getLogger(__name__)


def protected_versions(store: Store) -> set[int]:
    """Versions whose folders must stay: live, its parent, pinned, an open canary's."""
    protected: set[int] = set()
    live = store.live_version()
    if live:
        protected.add(live)
        row = store.adapter_version(live)
        if row is not None and row.parent:
            protected.add(row.parent)
    pinned = store.pinned_version()
    if pinned:
        protected.add(pinned)
    canary = open_canary(store)
    if canary is not None and canary.version is not None:
        protected.add(canary.version.version)
    return protected


def prune_versions(registry: AdapterRegistry, store: Store, *, keep: int) -> list[int]:
    """Remove the oldest version folders beyond ``keep``; returns the versions removed."""
    on_disk = registry.versions_on_disk()
    protected = protected_versions(store)
    removable = [v for v in on_disk if v not in protected]
    excess = len(on_disk) - keep
    pruned = removable[: max(0, excess)]
    for version in pruned:
        registry.remove(version)
        store.record_event("pruned", version=version, keep=keep)
    if pruned:
        log.info("adapter versions pruned", extra={"versions": pruned, "keep": keep})
    return pruned

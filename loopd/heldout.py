"""Held-out hygiene: which prompts the gate measures on, rotated as the loop selects on them.

Every promotion is a selection on the held-out set; promoted again and again on the same
prompts, the loop would overfit them. With ``gate.heldout_size`` smaller than the held-out
file, only that many prompts are active; ``gate.refresh_share`` of them are retired after
each promotion (and while the live adapter is at the floor, where new prompts may show
loops the old ones no longer do) and replaced by prompts of the file never used, then by
those retired longest ago. The active set lives in the store, so a restart keeps it, and
answers measured on retired prompts stay there too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from loopd.store import Store
from loopd.types import Prompt


def active_set(store: Store, pool: Sequence[Prompt], size: int | None) -> list[Prompt]:
    """The active held-out prompts; the first ``size`` of the file on first use."""
    by_id = {p.id: p for p in pool}
    active = [by_id[i] for i in store.active_heldout() if i in by_id]
    if not active:
        store.rotate_heldout(retire=[], add=[p.id for p in pool[: size or len(pool)]])
        active = [by_id[i] for i in store.active_heldout()]
    return active


def refresh(
    store: Store, pool: Sequence[Prompt], share: float, *, recycle: bool
) -> tuple[list[str], list[str]]:
    """Retire the oldest ``share`` of the active set and bring in as many others.

    Prompts never used come first; with ``recycle``, then those retired longest ago.
    Returns ``(retired, added)``; both empty when there is nothing to bring in.
    """
    active = store.active_heldout()
    count = min(len(active), math.ceil(len(active) * share))
    used = store.heldout_ever_used()
    fresh = [p.id for p in pool if p.id not in used]
    if recycle:
        retired = sorted((left, i) for i, left in used.items() if left is not None)
        fresh += [i for _, i in retired]
    added = fresh[:count]
    retired_now = active[: len(added)]
    if added:
        store.rotate_heldout(retire=retired_now, add=added)
    return retired_now, added

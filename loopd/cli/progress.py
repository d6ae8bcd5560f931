"""Progress for long CLI operations: a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from tqdm import tqdm

log = logging.getLogger("loopd.progress")


def progress_bar(
    description: str,
) -> tuple[Callable[[int, int, float | None], None], Callable[[], None]]:
    """A ``(step, total, loss)`` hook and a closer; a tqdm bar only on a real terminal."""
    state: dict[str, tqdm] = {}

    def update(step: int, total: int, loss: float | None) -> None:
        if not sys.stderr.isatty():
            if step == total or step % max(1, total // 10) == 0:
                log.info(description, extra={"step": step, "total": total, "loss": loss})
            return
        bar = state.setdefault("bar", tqdm(total=total, desc=description, leave=False))
        bar.update(step - bar.n)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.3f}")

    def close() -> None:
        if "bar" in state:
            state.pop("bar").close()

    return update, close

"""Read-only aggregates over the store: the totals, rates and tallies that the metrics
collector reads at scrape time, ``loopd status`` shows, and the deployment watch compares.

A mixin of ``Store`` (it needs only its ``db``), so callers keep asking the store; kept
apart because none of it writes: every method is one bounded query, safe to run from an
HTTP handler while a job writes (WAL), and cheap enough for every scrape.
"""

from __future__ import annotations

import json
from typing import Any

import sqlite_utils

RECENT_WINDOW = 500  # samples behind the "recent" degeneration rate
RECENT_SCAN = 10 * RECENT_WINDOW  # newest samples searched for the rates by serving name


class Aggregates:
    """Totals and rates over the store's tables; mixed into ``Store``."""

    db: sqlite_utils.Database

    # -- totals and rates: metrics and ``loopd status`` ---------------------------

    def counts(self) -> dict[str, int]:
        """Totals read at scrape time by the metrics collector (never stale)."""
        one = lambda sql: next(self.db.query(sql))["n"]  # noqa: E731
        return {
            "samples": one("SELECT COUNT(*) AS n FROM samples"),
            "degenerate_samples": one("SELECT COUNT(*) AS n FROM samples WHERE degenerate = 1"),
            "pairs": one("SELECT COUNT(*) AS n FROM pairs"),
            "fresh_pairs": one("SELECT COUNT(*) AS n FROM pairs WHERE trained_round IS NULL"),
            "rounds": one("SELECT COUNT(*) AS n FROM rounds"),
            "adapter_versions": one("SELECT COUNT(*) AS n FROM adapter_versions"),
        }

    def recent_degeneration_rate(self, window: int = RECENT_WINDOW) -> float:
        """Share of the last ``window`` samples that degenerated (the live loop rate)."""
        sql = (
            "SELECT AVG(degenerate) AS r FROM"
            " (SELECT degenerate FROM samples ORDER BY id DESC LIMIT ?)"
        )
        return next(self.db.query(sql, [window]))["r"] or 0.0

    def rates_by_kind(self, window: int = RECENT_WINDOW) -> dict[str, dict[str, float]]:
        """Loop rate and sample count of the last ``window`` samples, by prompt kind."""
        sql = (
            "SELECT COALESCE(p.kind, 'unknown') AS kind, AVG(s.degenerate) AS rate,"
            " COUNT(*) AS n FROM (SELECT * FROM samples ORDER BY id DESC LIMIT ?) s"
            " JOIN prompts p ON p.id = s.prompt_id GROUP BY 1 ORDER BY 1"
        )
        return {
            r["kind"]: {"rate": r["rate"], "samples": r["n"]} for r in self.db.query(sql, [window])
        }

    def rounds_by_status(self) -> dict[str, int]:
        sql = "SELECT status, COUNT(*) AS n FROM rounds GROUP BY status"
        return {r["status"]: r["n"] for r in self.db.query(sql)}

    # -- what the metrics collector reads at scrape time --------------------------

    def sample_tallies(self) -> dict[tuple[str | None, bool], int]:
        """Samples ever stored, by ``(serving name, degenerate)`` (None: the bare base);
        retention does not lower these."""
        sql = "SELECT adapter, degenerate, n FROM sample_tallies"
        return {(r["adapter"] or None, bool(r["degenerate"])): r["n"] for r in self.db.query(sql)}

    def recent_loops_by_adapter(
        self, window: int = RECENT_WINDOW, *, scan: int = RECENT_SCAN
    ) -> dict[str | None, tuple[int, int]]:
        """``(degenerate, samples)`` of each serving name's last ``window`` samples, for
        the names among the newest ``scan`` samples (bounded: a scrape stays cheap)."""
        sql = (
            "SELECT adapter, SUM(degenerate) AS d, COUNT(*) AS n FROM (SELECT adapter,"
            " degenerate, ROW_NUMBER() OVER (PARTITION BY adapter ORDER BY id DESC) AS k"
            " FROM (SELECT id, adapter, degenerate FROM samples ORDER BY id DESC LIMIT ?))"
            " WHERE k <= ? GROUP BY adapter"
        )
        return {r["adapter"]: (r["d"], r["n"]) for r in self.db.query(sql, [scan, window])}

    def last_trained_round(self) -> dict[str, Any] | None:
        """The newest round that finished training (whatever the gate said after):
        ``id``, ``final_loss``, ``train_metrics`` (decoded) and ``trained_at``, the time
        its adapter was published."""
        sql = (
            "SELECT r.id, r.final_loss, r.train_metrics, v.created_at AS trained_at"
            " FROM adapter_versions v JOIN rounds r ON r.id = v.round_id"
            " ORDER BY v.created_at DESC, v.version DESC LIMIT 1"
        )
        rows = list(self.db.query(sql))
        if not rows:
            return None
        return {**rows[0], "train_metrics": json.loads(rows[0]["train_metrics"] or "{}")}

    def decisions_by_outcome(self) -> dict[tuple[str, bool], int]:
        """Decisions ever recorded, by ``(source, promote)``."""
        sql = "SELECT source, promote, COUNT(*) AS n FROM decisions GROUP BY 1, 2"
        return {(r["source"], bool(r["promote"])): r["n"] for r in self.db.query(sql)}

    def deployments_by_source(self) -> dict[str, int]:
        """Deployments ever recorded, by who made them (``gate``: automatic; ``operator``)."""
        sql = (
            "SELECT COALESCE(json_extract(payload, '$.source'), 'unknown') AS source,"
            " COUNT(*) AS n FROM events WHERE kind = 'deployed' GROUP BY 1"
        )
        return {r["source"]: r["n"] for r in self.db.query(sql)}

    def last_event_at(self, kind: str) -> float | None:
        """When the newest event of ``kind`` was recorded, or None."""
        row = next(self.db.query("SELECT MAX(at) AS at FROM events WHERE kind = ?", [kind]))
        return row["at"]

    # -- samples by adapter: the deployment watch ------------------------------

    def max_sample_id(self) -> int:
        return next(self.db.query("SELECT MAX(id) AS n FROM samples"))["n"] or 0

    def loop_counts(
        self,
        adapter: str | None,
        *,
        after_id: int = 0,
        before_id: int | None = None,
        last: int | None = None,
    ) -> tuple[int, int]:
        """``(degenerate, samples)`` answered by serving name ``adapter`` (None: the base)
        with ids in ``(after_id, before_id)``; only the newest ``last`` when given."""
        sql = (
            "SELECT COALESCE(SUM(degenerate), 0) AS d, COUNT(*) AS n FROM (SELECT degenerate"
            " FROM samples WHERE adapter IS ? AND id > ? AND id < ? ORDER BY id DESC LIMIT ?)"
        )
        bound = before_id if before_id is not None else 2**62
        row = next(self.db.query(sql, [adapter, after_id, bound, last or -1]))
        return row["d"], row["n"]

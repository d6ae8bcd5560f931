"""The one SQLite database: every sample, pair, round, adapter version and event.

All SQL lives in this package: writes and the loop's reads here, the read-only totals
and rates in ``aggregates``. The database runs in WAL mode with a busy timeout so the
daemon's jobs and an operator's ``loopd status`` can read while a job writes. The schema
is managed by sqlite-utils ``Migrations``; a database that records a migration this code
does not know was written by a newer loopd and is refused rather than misread.

Writes that belong together (a batch of samples, a round's adapter and its pairs marked
as trained) happen in one transaction, so a crash never leaves half of a batch behind.
Every write transaction takes the write lock first (``_transaction``), so jobs writing
at once wait for each other instead of failing.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sqlite_utils

from loopd.store.aggregates import RECENT_SCAN, RECENT_WINDOW, Aggregates
from loopd.store.rows import (
    decision_from_row,
    eval_summary,
    messages_column,
    pair_from_row,
    pair_row,
    prompt_digest,
    sample_from_row,
    sample_row,
    version_from_row,
    version_row,
)
from loopd.store.schema import migrations
from loopd.types import (
    AdapterVersion,
    Completion,
    Detection,
    EvalAnswer,
    GateDecision,
    Pair,
    Prompt,
    Sample,
)

INTERRUPTED_REASON = (
    "loopd stopped (a crash, a kill or a power loss) while this round ran; "
    "its pairs stay fresh and train in a later round"
)


__all__ = ["INTERRUPTED_REASON", "RECENT_SCAN", "RECENT_WINDOW", "SchemaTooNewError", "Store"]


class SchemaTooNewError(RuntimeError):
    """The database was written by a newer loopd; reading it could lose data."""


class Store(Aggregates):
    """Repository over the loopd database; every method is one short transaction.

    The read-only totals and rates (metrics, ``loopd status``, the deployment watch) are
    in ``aggregates``; the column encodings in ``rows``."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._clock = clock
        self._local = threading.local()
        self.db.enable_wal()
        self._refuse_newer_schema()
        migrations.apply(self.db)

    @property
    def db(self) -> sqlite_utils.Database:
        """This thread's connection: jobs and HTTP handlers never share a transaction."""
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite_utils.Database(self.path)
            db.execute("PRAGMA busy_timeout = 10000")
            db.execute("PRAGMA foreign_keys = ON")
            self._local.db = db
        return db

    def _refuse_newer_schema(self) -> None:
        known = {m.name for m in migrations._migrations}
        unknown = [m.name for m in migrations.applied(self.db) if m.name not in known]
        if unknown:
            raise SchemaTooNewError(
                f"{self.path} has schema migrations this loopd does not know "
                f"({', '.join(unknown)}); it was written by a newer loopd. "
                "Upgrade loopd, or point state_dir elsewhere."
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite_utils.Database]:
        """One write transaction that takes the write lock first (``BEGIN IMMEDIATE``).

        sqlite-utils' ``atomic()`` begins a deferred transaction, and its inserts read the
        schema before they write: that read pins a WAL snapshot, and when another job
        commits in between, the upgrade to a write fails at once with "database is
        locked", without waiting (seen under ``bench/crash.py``). Taking the lock first
        makes a busy database wait up to the busy timeout instead.
        """
        db = self.db
        if db.conn.in_transaction:
            with db.atomic():  # nested: a savepoint inside ours
                yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.conn.commit()
        except BaseException:
            # a failed COMMIT (disk full) leaves the transaction open: every later write
            # would join it and never be committed; end it here
            db.conn.rollback()
            raise

    def close(self) -> None:
        self.db.close()

    # -- prompts and samples -------------------------------------------------

    def add_samples(self, rows: Sequence[tuple[Prompt, Completion, Detection]]) -> list[Sample]:
        """Store completions with their detections, degenerate or not, in one go."""
        now = self._clock()
        samples = []
        with self._transaction():
            for prompt, completion, detection in rows:
                key = self._prompt_key(prompt, now)
                row = sample_row(completion, detection, now) | {"prompt_id": key}
                row_id = self.db["samples"].insert(row).last_pk
                samples.append(Sample(row_id, prompt, completion, detection, now))
            self._tally(samples)
        return samples

    def _tally(self, samples: Sequence[Sample]) -> None:
        """Count stored samples by serving name and outcome, in the caller's transaction:
        the tallies outlive retention, so the metrics' counters never go down."""
        tally = Counter((s.completion.adapter or "", int(s.detection.degenerate)) for s in samples)
        for (adapter, degenerate), n in tally.items():
            self.db.execute(
                "INSERT INTO sample_tallies (adapter, degenerate, n) VALUES (?, ?, ?)"
                " ON CONFLICT (adapter, degenerate) DO UPDATE SET n = n + excluded.n",
                [adapter, degenerate, n],
            )

    def add_ingested(
        self, key: str | None, rows: Sequence[tuple[Prompt, Completion, Detection]]
    ) -> tuple[list[int], bool]:
        """Store an ingested batch once per idempotency ``key``: (sample ids, replayed).

        The key and the samples commit together, so a batch is stored wholly or not at
        all, and a retried post finds the first one's ids.
        """
        with self._transaction() as db:
            if key is not None:
                seen = list(db.query("SELECT sample_ids FROM ingest_keys WHERE key = ?", [key]))
                if seen:
                    return json.loads(seen[0]["sample_ids"]), True
            ids = [sample.id for sample in self.add_samples(rows)]
            if key is not None:
                db["ingest_keys"].insert(
                    {"key": key, "sample_ids": json.dumps(ids), "created_at": self._clock()}
                )
        return ids, False

    def _prompt_key(self, prompt: Prompt, now: float) -> str:
        """The stored prompt these words belong to: its id, or ``id@digest`` once the
        words under that id changed (a prompt file edited, or two files reusing an id).

        A stored prompt's words never change, so every old sample and pair keeps the
        prompt it was answered to; only ``reference`` and ``kind`` follow the file.
        """
        words = {"text": prompt.text, "messages": messages_column(prompt)}
        for key in (prompt.id, f"{prompt.id}@{prompt_digest(words)}"):
            found = list(self.db.query("SELECT text, messages FROM prompts WHERE id = ?", [key]))
            if not found or found[0] == words:
                row = {"id": key, **words, "reference": prompt.reference, "kind": prompt.kind}
                self.db["prompts"].insert({**row, "created_at": now}, pk="id", ignore=True)
                self.db["prompts"].update(key, {"reference": prompt.reference, "kind": prompt.kind})
                return key
        raise AssertionError("unreachable: a digest key holds exactly its own words")

    def unpaired_degenerate(self, limit: int = 1000) -> list[Sample]:
        return self._samples_where("s.degenerate = 1 AND s.paired = 0", [], limit)

    def clean_samples_of(self, prompt_id: str, limit: int = 5) -> list[Sample]:
        return self._samples_where("s.prompt_id = ? AND s.degenerate = 0", [prompt_id], limit)

    def _samples_where(self, where: str, params: list[Any], limit: int) -> list[Sample]:
        sql = (
            "SELECT s.*, p.text AS p_text, p.messages AS p_messages, p.reference AS p_reference,"
            f" p.kind AS p_kind FROM samples s JOIN prompts p ON p.id = s.prompt_id WHERE {where}"
            " ORDER BY s.id LIMIT ?"
        )
        return [sample_from_row(r) for r in self.db.query(sql, [*params, limit])]

    # -- pairs ---------------------------------------------------------------

    def add_pairs(self, pairs: Sequence[Pair], *, handled_sample_ids: Iterable[int]) -> None:
        """Store pairs and mark their source samples paired, atomically.

        Samples that yielded no pair are marked too (``handled_sample_ids``) so they are
        not retried forever; they stay in the database and in the degeneration rate.
        """
        now = self._clock()
        with self._transaction():
            self.db["pairs"].insert_all(pair_row(p, now) for p in pairs)
            for sample_id in handled_sample_ids:
                self.db["samples"].update(sample_id, {"paired": 1})

    def fresh_pairs(self, limit: int) -> list[Pair]:
        return self._pairs_where("q.trained_round IS NULL ORDER BY q.id DESC LIMIT ?", [limit])

    def trained_pairs(self, rounds: Iterable[int] | None = None) -> list[Pair]:
        """Every pair some round (or one of ``rounds``) has trained on, oldest first."""
        if rounds is None:
            return self._pairs_where("q.trained_round IS NOT NULL ORDER BY q.id", [])
        ids = list(rounds)
        marks = ", ".join("?" * len(ids))
        return self._pairs_where(f"q.trained_round IN ({marks}) ORDER BY q.id", ids)

    def count_fresh_pairs(self) -> int:
        return self.db["pairs"].count_where("trained_round IS NULL")

    def replay_pairs(self, count: int, *, seed: int) -> list[Pair]:
        """A seeded random sample of already-trained pairs, against forgetting."""
        ids = [
            r["id"] for r in self.db.query("SELECT id FROM pairs WHERE trained_round IS NOT NULL")
        ]
        chosen = random.Random(seed).sample(ids, min(count, len(ids)))
        if not chosen:
            return []
        marks = ",".join("?" * len(chosen))
        return self._pairs_where(f"q.id IN ({marks}) ORDER BY q.id", chosen)

    def _pairs_where(self, where: str, params: list[Any]) -> list[Pair]:
        sql = (
            "SELECT q.*, p.text AS p_text, p.messages AS p_messages, p.reference AS p_reference,"
            f" p.kind AS p_kind FROM pairs q JOIN prompts p ON p.id = q.prompt_id WHERE {where}"
        )
        return [pair_from_row(r) for r in self.db.query(sql, params)]

    def mark_trained(self, pair_ids: Iterable[int], round_id: int) -> None:
        with self._transaction():
            self._mark_trained(pair_ids, round_id)

    def _mark_trained(self, pair_ids: Iterable[int], round_id: int) -> None:
        for pair_id in pair_ids:
            self.db["pairs"].update(pair_id, {"trained_round": round_id})

    def add_trained_version(
        self, version: AdapterVersion, *, pair_ids: Iterable[int], round_id: int
    ) -> None:
        """A round's published adapter and its pairs marked trained, in one transaction:
        a crash before it leaves the pairs fresh (trained again later), never lost."""
        with self._transaction():
            self.db["adapter_versions"].insert(version_row(version), pk="version")
            self._mark_trained(pair_ids, round_id)

    # -- rounds, adapters, events ----------------------------------------------

    def start_round(self, *, parent_version: int | None, attempt_key: str | None = None) -> int:
        row = {
            "status": "running",
            "started_at": self._clock(),
            "parent_version": parent_version,
            "attempt_key": attempt_key,
        }
        with self._transaction():
            return self.db["rounds"].insert(row).last_pk

    def failures_of(self, attempt_key: str, limit: int = 2) -> list[tuple[str | None, float]]:
        """``(error kind, finished_at)`` of the latest rounds that tried ``attempt_key``,
        newest first; kind None for a round that did not fail, or was interrupted."""
        sql = (
            "SELECT CASE WHEN 'interrupted' IN (status, error_kind) THEN NULL"
            " ELSE error_kind END AS kind, finished_at"
            " FROM rounds WHERE attempt_key = ? AND status != 'running' ORDER BY id DESC LIMIT ?"
        )
        return [(r["kind"], r["finished_at"]) for r in self.db.query(sql, [attempt_key, limit])]

    def finish_round(self, round_id: int, status: str, **fields: Any) -> None:
        """End a round; ``train_metrics`` (TRL's last logged values) is kept as JSON."""
        if fields.get("train_metrics") is not None:
            fields["train_metrics"] = json.dumps(fields["train_metrics"], default=str)
        with self._transaction():
            self.db["rounds"].update(
                round_id, {"status": status, "finished_at": self._clock(), **fields}
            )

    def interrupt_running_rounds(self) -> int:
        """Rounds left 'running' by a crash are over; say so instead of lying forever.

        Their pairs were never marked trained (that happens with the adapter's record, in
        one transaction), so they train in a later round.
        """
        where = "status = 'running'"
        count = self.db["rounds"].count_where(where)
        with self._transaction():
            self.db.execute(
                "UPDATE rounds SET status = 'interrupted', error_kind = 'interrupted',"
                f" error = ?, finished_at = ? WHERE {where}",
                [INTERRUPTED_REASON, self._clock()],
            )
        return count

    def rounds(self, limit: int = 20) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM rounds ORDER BY id DESC LIMIT ?", [limit]))

    def add_adapter_version(self, version: AdapterVersion) -> None:
        with self._transaction():
            self.db["adapter_versions"].insert(version_row(version), pk="version")

    def adapter_version(self, version: int) -> AdapterVersion | None:
        if not 0 <= version < 2**63:  # SQLite's INTEGER; no such version (a 404, not a 500)
            return None
        rows = list(self.db.query("SELECT * FROM adapter_versions WHERE version = ?", [version]))
        return version_from_row(rows[0]) if rows else None

    def max_adapter_version(self) -> int:
        row = next(self.db.query("SELECT MAX(version) AS v FROM adapter_versions"))
        return row["v"] or 0

    def record_event(
        self, kind: str, *, version: int | None = None, round_id: int | None = None, **payload: Any
    ) -> None:
        row = {"at": self._clock(), "kind": kind, "version": version, "round_id": round_id}
        with self._transaction():
            self.db["events"].insert(row | {"payload": json.dumps(payload, default=str)})

    def events(self, limit: int = 50) -> list[dict[str, Any]]:
        return list(self.db.query("SELECT * FROM events ORDER BY id DESC LIMIT ?", [limit]))

    def live_version(self) -> int | None:
        """The adapter serving now: the last deploy or rollback wins; None = bare base."""
        sql = (
            "SELECT version FROM events WHERE kind IN ('deployed', 'rolled_back')"
            " ORDER BY id DESC LIMIT 1"
        )
        rows = list(self.db.query(sql))
        return rows[0]["version"] if rows else None

    def last_event(self, kinds: Sequence[str]) -> dict[str, Any] | None:
        """The newest event of one of ``kinds``, payload decoded."""
        marks = ", ".join("?" * len(kinds))
        sql = f"SELECT * FROM events WHERE kind IN ({marks}) ORDER BY id DESC LIMIT 1"
        rows = list(self.db.query(sql, list(kinds)))
        return {**rows[0], "payload": json.loads(rows[0]["payload"] or "{}")} if rows else None

    def pinned_version(self) -> int | None:
        """The version an operator pinned (deployments frozen; 0: the base model), or None."""
        event = self.last_event(("pinned", "unpinned"))
        return event["version"] if event and event["kind"] == "pinned" else None

    def rolled_back_versions(self) -> set[int]:
        """Versions once rolled back: never promoted again automatically."""
        sql = (
            "SELECT DISTINCT json_extract(payload, '$.previous') AS v FROM events"
            " WHERE kind = 'rolled_back'"
        )
        return {r["v"] for r in self.db.query(sql) if r["v"] is not None}

    def rollbacks_by_source(self) -> dict[str, int]:
        sql = (
            "SELECT COALESCE(json_extract(payload, '$.source'), 'operator') AS source,"
            " COUNT(*) AS n FROM events WHERE kind = 'rolled_back' GROUP BY 1"
        )
        return {r["source"]: r["n"] for r in self.db.query(sql)}

    def adapter_versions(self) -> list[AdapterVersion]:
        rows = self.db.query("SELECT * FROM adapter_versions ORDER BY version")
        return [version_from_row(r) for r in rows]

    # -- decisions -----------------------------------------------------------

    def record_decision(self, source: str, promote: bool, reason: str, **fields: Any) -> int:
        """Store one gate or watch decision; ``checks``, ``candidate``, ``live`` as JSON."""
        row = {"at": self._clock(), "source": source, "promote": int(promote), "reason": reason}
        for key in ("checks", "candidate", "live"):
            if key in fields:
                fields[key] = json.dumps(fields[key], default=str)
        with self._transaction():
            return self.db["decisions"].insert(row | fields).last_pk

    def record_gate_decision(
        self, decision: GateDecision, *, round_id: int, candidate: int, live: int | None
    ) -> None:
        """A round's gate verdict: an event (summaries) and a decision (every check)."""
        summaries = {
            "candidate": eval_summary(decision.candidate),
            "live": eval_summary(decision.live),
        }
        self.record_event(
            "gate", version=candidate, round_id=round_id,
            promote=decision.promote, reason=decision.reason, **summaries,
        )  # fmt: skip
        self.record_decision(
            "gate", decision.promote, decision.reason, round_id=round_id,
            candidate_version=candidate, live_version=live,
            checks=[asdict(c) for c in decision.checks], **summaries,
        )  # fmt: skip

    def decisions(self, limit: int = 20, *, version: int | None = None) -> list[dict[str, Any]]:
        """Newest first; only those about ``version`` (as candidate) when given."""
        where, params = ("WHERE candidate_version = ?", [version]) if version else ("", [])
        sql = f"SELECT * FROM decisions {where} ORDER BY id DESC LIMIT ?"
        return [decision_from_row(r) for r in self.db.query(sql, [*params, limit])]

    # -- the held-out set ------------------------------------------------------

    def active_heldout(self) -> list[str]:
        """Prompt ids the gate measures on now, in the order they joined."""
        sql = "SELECT prompt_id FROM heldout_set WHERE retired_at IS NULL ORDER BY serial"
        return [r["prompt_id"] for r in self.db.query(sql)]

    def heldout_ever_used(self) -> dict[str, float | None]:
        """Every prompt id ever in the held-out set, with when it last left (None: active)."""
        sql = (
            "SELECT prompt_id, MAX(COALESCE(retired_at, 1e300)) AS left FROM heldout_set GROUP BY 1"
        )
        return {
            r["prompt_id"]: None if r["left"] >= 1e300 else r["left"] for r in self.db.query(sql)
        }

    def rotate_heldout(self, *, retire: Sequence[str], add: Sequence[str]) -> None:
        now = self._clock()
        with self._transaction():
            for prompt_id in retire:
                self.db.execute(
                    "UPDATE heldout_set SET retired_at = ?"
                    " WHERE prompt_id = ? AND retired_at IS NULL",
                    [now, prompt_id],
                )
            self.db["heldout_set"].insert_all({"prompt_id": p, "added_at": now} for p in add)

    def record_heldout_answers(self, adapter: str | None, answers: Sequence[EvalAnswer]) -> None:
        now = self._clock()
        rows = (
            {k: v for k, v in asdict(a).items() if k != "text"} | {"adapter": adapter, "at": now}
            for a in answers
        )
        with self._transaction():
            self.db["heldout_answers"].insert_all(rows)

    # -- retention -------------------------------------------------------------

    def delete_old_samples(self, older_than: float) -> int:
        """Retention: drop samples older than the cutoff that no pair refers to."""
        where = "created_at < ? AND id NOT IN (SELECT sample_id FROM pairs)"
        with self._transaction():
            count = self.db["samples"].count_where(where, [older_than])
            self.db["samples"].delete_where(where, [older_than])
        return count

    def delete_excess_samples(self, keep: int) -> int:
        """Retention by count: drop the oldest samples past the newest ``keep`` that no
        pair refers to; a loop pairing has not handled yet is never dropped."""
        deletable = (
            "id NOT IN (SELECT sample_id FROM pairs) AND NOT (degenerate = 1 AND paired = 0)"
        )
        with self._transaction() as db:
            excess = max(0, db["samples"].count - keep)
            oldest = f"SELECT id FROM samples WHERE {deletable} ORDER BY id LIMIT ?"
            count = db.execute(f"DELETE FROM samples WHERE id IN ({oldest})", [excess]).rowcount
        return count

"""The store: a real SQLite file in WAL mode, migrations, atomic batches, no silent loss."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from loopd.store import SchemaTooNewError, Store
from loopd.types import Completion, Detection, Pair, Prompt

PROMPT = Prompt(id="p1", text="doc: a b text:", reference="a b", kind="plain")
LOOP = Detection(degenerate=True, rule="tail_cycle", score=1.0, loop_start=3, period=2, repeats=9)


def completion(text: str = " a a a a", finish: str = "length") -> Completion:
    return Completion(prompt_id="p1", text=text, finish_reason=finish, token_ids=(5, 5, 5, 5))


def test_wal_mode_and_round_trip(store: Store) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    [sample] = store.add_samples([(PROMPT, completion(), LOOP)])
    [again] = store.unpaired_degenerate()
    assert again == sample
    assert again.completion.token_ids == (5, 5, 5, 5)
    assert again.detection.period == 2


def test_every_sample_is_kept_degenerate_or_not(store: Store) -> None:
    store.add_samples(
        [(PROMPT, completion(), LOOP), (PROMPT, completion(" a b", "stop"), Detection(False))]
    )
    counts = store.counts()
    assert (counts["samples"], counts["degenerate_samples"]) == (2, 1)
    assert [s.completion.text for s in store.clean_samples_of("p1")] == [" a b"]


def test_a_failing_batch_writes_nothing(store: Store) -> None:
    broken = Completion(prompt_id="p1", text=" x", finish_reason="stop", token_ids=(object(),))
    with pytest.raises(TypeError):
        store.add_samples([(PROMPT, completion(), LOOP), (PROMPT, broken, LOOP)])
    assert store.counts()["samples"] == 0


def test_pairs_fresh_then_trained_then_replayed(store: Store) -> None:
    samples = store.add_samples([(PROMPT, completion(), LOOP)] * 3)
    pairs = [Pair(PROMPT, " a b", s.completion.text, "reference", s.id) for s in samples]
    store.add_pairs(pairs, handled_sample_ids=[s.id for s in samples])
    assert store.unpaired_degenerate() == []
    fresh = store.fresh_pairs(10)
    assert len(fresh) == 3 and store.count_fresh_pairs() == 3
    round_id = store.start_round(parent_version=None)
    store.mark_trained([p.id for p in fresh[:2]], round_id)
    assert store.count_fresh_pairs() == 1
    replay = store.replay_pairs(5, seed=0)
    assert sorted(p.id for p in replay) == sorted(p.id for p in fresh[:2])


def test_retention_keeps_samples_that_pairs_use(tmp_path: Path) -> None:
    now = [1000.0]
    store = Store(tmp_path / "db.sqlite", clock=lambda: now[0])
    old_loop, _old_clean = store.add_samples(
        [(PROMPT, completion(), LOOP), (PROMPT, completion(" a b"), Detection(False))]
    )
    store.add_pairs(
        [Pair(PROMPT, " a b", " a a", "reference", old_loop.id)], handled_sample_ids=[old_loop.id]
    )
    now[0] = 5000.0
    store.add_samples([(PROMPT, completion(), LOOP)])
    assert store.delete_old_samples(older_than=2000.0) == 1
    assert store.counts()["samples"] == 2


def test_retention_by_count_keeps_pairs_and_unpaired_loops(store: Store) -> None:
    paired, unpaired_loop, *clean = store.add_samples(
        [(PROMPT, completion(), LOOP), (PROMPT, completion(), LOOP)]
        + [(PROMPT, completion(f" c{i}"), Detection(False)) for i in range(5)]
    )
    store.add_pairs(
        [Pair(PROMPT, " a b", " a a", "reference", paired.id)], handled_sample_ids=[paired.id]
    )
    assert store.delete_excess_samples(keep=4) == 3  # the three oldest clean ones
    left = {row["id"] for row in store.db["samples"].rows}
    assert left == {paired.id, unpaired_loop.id, clean[3].id, clean[4].id}
    assert store.delete_excess_samples(keep=1) == 2  # past keep, but never the loop or pair
    assert store.delete_excess_samples(keep=100) == 0


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
            " VALUES ('loopd', 'm999_future', 'x')"
        )
    with pytest.raises(SchemaTooNewError, match="newer loopd"):
        Store(path)


def test_live_version_follows_deploy_and_rollback_events(store: Store) -> None:
    assert store.live_version() is None
    store.record_event("deployed", version=1)
    store.record_event("deployed", version=2)
    store.record_event("gate", version=3, promote=False)
    assert store.live_version() == 2
    store.record_event("rolled_back", version=1)
    assert store.live_version() == 1


def test_rounds_left_running_by_a_crash_are_marked_interrupted(store: Store) -> None:
    crashed = store.start_round(parent_version=None)
    done = store.start_round(parent_version=None)
    store.finish_round(done, "promoted")
    assert store.interrupt_running_rounds() == 1
    statuses = {r["id"]: r["status"] for r in store.rounds()}
    assert statuses == {crashed: "interrupted", done: "promoted"}

"""The database schema, as sqlite-utils migrations applied in order on open.

A migration, once released, never changes: a new column or table is a new function at
the end, so every loopd database reaches the same schema by the same steps.
"""

from __future__ import annotations

import sqlite_utils
from sqlite_utils.migrations import Migrations

migrations = Migrations("loopd")


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db["prompts"].create(
        {
            "id": str,
            "text": str,
            "messages": str,
            "reference": str,
            "kind": str,
            "created_at": float,
        },
        pk="id",
    )
    db["samples"].create(
        {
            "id": int, "prompt_id": str, "adapter": str, "text": str, "token_ids": str,
            "finish_reason": str, "stop_reason": str, "temperature": float, "seed": int,
            "latency_s": float, "degenerate": int, "rule": str, "score": float,
            "loop_start": int, "loop_start_token": int, "period": int, "repeats": float,
            "loop_fraction": float, "paired": int, "created_at": float,
        },
        pk="id",
        foreign_keys=[("prompt_id", "prompts", "id")],
        defaults={"paired": 0},
    )  # fmt: skip
    db["samples"].create_index(["degenerate", "paired"])
    db["samples"].create_index(["created_at"])
    db["pairs"].create(
        {
            "id": int, "prompt_id": str, "sample_id": int, "chosen": str, "rejected": str,
            "chosen_source": str, "trained_round": int, "created_at": float,
        },
        pk="id",
        foreign_keys=[("prompt_id", "prompts", "id"), ("sample_id", "samples", "id")],
    )  # fmt: skip
    db["pairs"].create_index(["trained_round"])
    db["rounds"].create(
        {
            "id": int, "status": str, "started_at": float, "finished_at": float,
            "parent_version": int, "candidate_version": int, "fresh_pairs": int,
            "replay_pairs": int, "dropped_overlong": int, "train_seconds": float,
            "final_loss": float, "decision": str, "error": str,
        },
        pk="id",
    )  # fmt: skip
    db["adapter_versions"].create(
        {"version": int, "path": str, "parent": int, "round_id": int, "created_at": float},
        pk="version",
    )
    db["events"].create(
        {"id": int, "at": float, "kind": str, "version": int, "round_id": int, "payload": str},
        pk="id",
    )
    db["events"].create_index(["kind"])


@migrations()
def m002_token_logprobs(db: sqlite_utils.Database) -> None:
    """Keep the chosen tokens' logprobs that vLLM returns (JSON list, or NULL)."""
    db["samples"].add_column("token_logprobs", str)


@migrations()
def m003_pair_endings(db: sqlite_utils.Database) -> None:
    """Whether each side of a pair ended on its own (trained with EOS) or was cut off,
    and where the rejected side's loop starts.

    Pairs stored before this were trained with EOS on both sides (TRL's default); they
    keep it on the chosen side and lose it on a rejected side the token limit cut.
    """
    db["pairs"].add_column("chosen_eos", int, not_null_default=1)
    db["pairs"].add_column("rejected_eos", int, not_null_default=0)
    db["pairs"].add_column("loop_start", int)
    db.execute(
        "UPDATE pairs SET rejected_eos = 1 WHERE sample_id IN"
        " (SELECT id FROM samples WHERE finish_reason = 'stop')"
    )
    db.execute(
        "UPDATE pairs SET loop_start ="
        " (SELECT loop_start FROM samples WHERE samples.id = pairs.sample_id)"
    )


@migrations()
def m004_round_attempts(db: sqlite_utils.Database) -> None:
    """What a round tried (``attempt_key``) and how it failed, so a failure that repeats
    the same way with the same settings and pairs is not retried forever."""
    db["rounds"].add_column("attempt_key", str)
    db["rounds"].add_column("error_kind", str)
    db["rounds"].create_index(["attempt_key"])


@migrations()
def m005_decisions(db: sqlite_utils.Database) -> None:
    """Every gate and watch decision with its numbers, intervals and reasons (JSON), so
    an operator can see why an adapter went live, stayed out, or was rolled back."""
    db["decisions"].create(
        {
            "id": int, "at": float, "source": str, "round_id": int, "candidate_version": int,
            "live_version": int, "promote": int, "reason": str, "checks": str,
            "candidate": str, "live": str,
        },
        pk="id",
    )  # fmt: skip
    db["decisions"].create_index(["candidate_version"])


@migrations()
def m006_heldout_set(db: sqlite_utils.Database) -> None:
    """The held-out prompts the gate measures on now (``retired_at`` NULL) and before,
    and every held-out answer measured, so a refreshed set keeps its old results."""
    db["heldout_set"].create(
        {"serial": int, "prompt_id": str, "added_at": float, "retired_at": float}, pk="serial"
    )
    db["heldout_answers"].create(
        {
            "id": int, "at": float, "adapter": str, "prompt_id": str, "degenerate": int,
            "length": int, "tokens": int, "finish_reason": str, "edits": int,
            "reference_length": int,
        },
        pk="id",
    )  # fmt: skip
    db["heldout_answers"].create_index(["adapter"])


@migrations()
def m007_ingest_keys(db: sqlite_utils.Database) -> None:
    """Idempotency keys of ingested batches: a batch posted again (a client's retry after
    a lost answer) returns what the first post stored instead of storing it twice."""
    db["ingest_keys"].create({"key": str, "sample_ids": str, "created_at": float}, pk="key")


@migrations()
def m008_metric_tallies(db: sqlite_utils.Database) -> None:
    """What Prometheus counts must never lose: samples per serving name and outcome
    (retention deletes samples, and a counter that went down would read as a restart),
    and each round's last logged TRL metrics (DPO loss, reward margin and accuracy).

    ``adapter`` is '' for the bare base model (a NULL cannot be part of the key).
    """
    db["sample_tallies"].create(
        {"adapter": str, "degenerate": int, "n": int}, pk=("adapter", "degenerate")
    )
    db.execute(
        "INSERT INTO sample_tallies (adapter, degenerate, n)"
        " SELECT COALESCE(adapter, ''), degenerate, COUNT(*) FROM samples GROUP BY 1, 2"
    )
    db["rounds"].add_column("train_metrics", str)

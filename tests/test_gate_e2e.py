"""The gate and the deployment watch on real adapters: real TRL rounds on the tiny model.

Bad candidates are made the way they happen: by training on bad pairs. A cut trained as
a finished answer teaches "stop early" (shorter answers, fewer loops); pairs with their
sides swapped teach the model to loop.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig
from loopd.deploy import DeployRefused
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.status import snapshot
from loopd.store import Store


def loop_for(cfg: LoopdConfig) -> Loop:
    inputs = resolve_inputs(cfg)
    backend = LocalBackend(inputs.base_model, threads=1)
    return Loop(cfg, inputs, backend=backend, store=Store(cfg.db_path))


def heldout_subset(config: LoopdConfig, folder: Path, keep: set[str]) -> LoopdConfig:
    lines = [line for line in config.gate.heldout.read_text().splitlines() if line]
    subset = folder / "heldout-subset.jsonl"
    subset.write_text("".join(line + "\n" for line in lines if json.loads(line)["id"] in keep))
    return config.model_copy(update={"gate": config.gate.model_copy(update={"heldout": subset})})


def without_references(config: LoopdConfig, folder: Path) -> LoopdConfig:
    """The same held-out prompts with their references removed (most production prompts)."""
    lines = [json.loads(line) for line in config.gate.heldout.read_text().splitlines() if line]
    bare = folder / "heldout-no-references.jsonl"
    bare.write_text(
        "".join(
            json.dumps({k: v for k, v in row.items() if k != "reference"}) + "\n" for row in lines
        )
    )
    return config.model_copy(update={"gate": config.gate.model_copy(update={"heldout": bare})})


def test_a_truncating_candidate_is_rejected_without_references(
    config: LoopdConfig, tmp_path: Path
) -> None:
    cfg = without_references(config, tmp_path).model_copy(
        update={
            "pairing": config.pairing.model_copy(
                update={"chosen_order": ["truncate"], "min_truncated_chars": 1}
            ),
            "sampling": config.sampling.model_copy(update={"prompts_per_round": 160}),
            "training": config.training.model_copy(update={"epochs": 4, "learning_rate": 3e-3}),
        }
    )
    loop = loop_for(cfg)
    loop.sample_round()
    loop.store.db.execute("UPDATE pairs SET chosen_eos = 1")  # every cut taught as an ending
    report = loop.training_round()
    assert report.decision.candidate.degeneration_rate < report.decision.live.degeneration_rate
    assert report.status == "rejected" and "answers shortened" in report.decision.reason
    [decision] = loop.store.decisions()
    names = {c["name"] for c in decision["checks"]}
    assert "cer" not in names and {"clean_length", "ending", "likelihood"} <= names
    failed = [c for c in decision["checks"] if not c["passed"]]
    assert failed and all(c["interval"] for c in failed if c["name"] == "clean_length")


def swap_pairs(store: Store) -> None:
    """Chosen and rejected exchanged: DPO on these teaches the loops."""
    store.db.execute(
        "UPDATE pairs SET chosen = rejected, rejected = chosen, chosen_eos = rejected_eos,"
        " rejected_eos = chosen_eos, loop_start = NULL"
    )


@pytest.fixture
def watched(config: LoopdConfig) -> LoopdConfig:
    return config.model_copy(
        update={
            "sampling": config.sampling.model_copy(update={"prompts_per_round": 32}),
            "deploy": config.deploy.model_copy(update={"watch_samples": 32}),
            "training": config.training.model_copy(update={"learning_rate": 5e-3}),
        }
    )


def test_a_looping_candidate_is_rejected_and_if_forced_live_the_watch_rolls_it_back(
    watched: LoopdConfig,
) -> None:
    loop = loop_for(watched)
    loop.sample_round()  # the base's answers: pairs, and the watch's baseline
    swap_pairs(loop.store)
    report = loop.training_round()
    candidate, live = report.decision.candidate, report.decision.live
    assert candidate.degeneration_rate > live.degeneration_rate
    assert report.status == "rejected" and "not significant" in report.decision.reason

    loop.deployer.deploy(report.candidate, automatic=False)  # an operator forces it live
    assert loop.store.live_version() == report.candidate.version
    loop.sample_round()  # 32 answers from the looping adapter: the watch judges
    assert loop.store.live_version() is None  # rolled back to the parent: the base model
    [watch, gated] = loop.store.decisions()
    assert (watch["source"], gated["source"]) == ("watch", "gate") and not watch["promote"]
    assert watch["reason"].startswith("loop rate rose")
    event = loop.store.last_event(("rolled_back",))
    assert event["payload"]["source"] == "watch" and event["payload"]["previous"] == 1
    with pytest.raises(DeployRefused, match="rolled back once"):
        loop.deployer.deploy(report.candidate)


def test_rounds_are_skipped_while_the_live_adapter_is_at_the_floor(
    config: LoopdConfig, tmp_path: Path
) -> None:
    """Live loops on 3 held-out prompts; a significant gain needs 5 fixed: no round runs."""
    answers = loop_for(config).evaluate(None).answers
    looping = [a.prompt_id for a in answers if a.degenerate][:3]
    clean = [a.prompt_id for a in answers if not a.degenerate][:40]
    loop = loop_for(heldout_subset(config, tmp_path, set(looping + clean)))
    loop.sample_round()
    assert loop.store.count_fresh_pairs() >= config.training.min_fresh_pairs
    assert not loop.ready_to_train()
    reason = loop.store.last_event(("round_skipped",))["payload"]["reason"]
    assert "loops on 3 of 43 held-out prompts" in reason and "must fix at least 5" in reason
    assert loop.store.rounds() == []


def test_a_canary_answers_its_share_of_sampling_before_it_is_promoted(
    config: LoopdConfig,
) -> None:
    cfg = config.model_copy(
        update={
            "gate": config.gate.model_copy(update={"canary_share": 0.5, "canary_samples": 16}),
            "sampling": config.sampling.model_copy(update={"prompts_per_round": 32}),
        }
    )
    loop = loop_for(cfg)
    loop.sample_round()
    report = loop.training_round()
    assert report.decision.promote and report.status == "canary"
    assert loop.store.live_version() is None  # not yet: the canary decides
    assert "canary of v0001 (round 1) is still running" in loop.canary_running()
    assert snapshot(loop.store)["candidate"] == {"round": 1, "version": 1, "stage": "canary"}

    restarted = loop_for(cfg)  # a daemon restart mid-canary resumes it
    restarted.recover()
    assert "loopd-v0001" in restarted.backend.adapters()
    first_canary_sample = restarted.store.max_sample_id()
    restarted.sample_round()  # 16 prompts to the candidate, 16 to the live base
    answered = {
        row["adapter"]: row["n"]
        for row in restarted.store.db.query(
            "SELECT adapter, COUNT(*) AS n FROM samples WHERE id > ? GROUP BY adapter",
            [first_canary_sample],
        )
    }
    assert answered == {None: 16, "loopd-v0001": 16}
    assert restarted.store.live_version() == 1
    [canary, gated] = restarted.store.decisions()
    assert (canary["source"], gated["source"]) == ("canary", "gate") and canary["promote"]
    assert restarted.store.rounds()[0]["status"] == "promoted"


def test_the_held_out_set_rotates_a_share_and_keeps_old_results(config: LoopdConfig) -> None:
    cfg = config.model_copy(
        update={"gate": config.gate.model_copy(update={"heldout_size": 60, "refresh_share": 0.25})}
    )
    loop = loop_for(cfg)
    pool = [p.id for p in loop.inputs.heldout]
    assert loop.store.active_heldout() == pool[:60]
    assert [a.prompt_id for a in loop.evaluate(None).answers] == pool[:60]

    assert loop.refresh_heldout("a promotion selected on it", recycle=True)
    active = loop.store.active_heldout()
    assert active == pool[15:75]  # the oldest quarter out, the next unused quarter in
    assert [a.prompt_id for a in loop.evaluate(None).answers] == active  # measured again
    kept = loop.store.db.execute(
        "SELECT COUNT(DISTINCT prompt_id) FROM heldout_answers WHERE adapter IS NULL"
    ).fetchone()[0]
    assert kept == 75  # the retired prompts' answers are still there
    assert loop_for(cfg).store.active_heldout() == active  # a restart keeps the set
    event = loop.store.last_event(("heldout_refreshed",))["payload"]
    assert event["retired"] == pool[:15] and event["added"] == pool[60:75]

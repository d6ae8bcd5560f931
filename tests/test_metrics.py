"""Prometheus metrics: each value read back equals what the database holds.

Every test owns a fresh ``Metrics`` (its own ``CollectorRegistry``) and drives real
parts: the tiny embedded model serving, real TRL training, a real SQLite file, and
``promtool`` linting the exposition.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import sqlite_utils
from prometheus_client import generate_latest

from loopd.backends.local import LocalBackend
from loopd.backends.vllm import ServingUnavailableError
from loopd.config import LoopdConfig
from loopd.detect import detect
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.metrics import Metrics
from loopd.store import Store
from loopd.store.schema import migrations
from loopd.types import Completion, Prompt

LOOP_TEXT = "The cat sat on the mat. " * 20


def value(metrics: Metrics, metric: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


def one(store: Store, sql: str, params: list | None = None) -> float | None:
    return next(store.db.query(sql, params or []))["v"]


def samples_by_adapter_and_outcome(store: Store) -> dict[tuple[str, str], int]:
    """What the database holds, grouped as ``loopd_samples_total`` labels it."""
    sql = (
        "SELECT COALESCE(adapter, 'base') AS adapter, degenerate, COUNT(*) AS n"
        " FROM samples GROUP BY 1, 2"
    )
    return {
        (r["adapter"], "degenerate" if r["degenerate"] else "clean"): r["n"]
        for r in store.db.query(sql)
    }


def store_answers(store: Store, adapter: str | None, texts: list[str]) -> None:
    """Store completions of ``adapter``, each detected by the real detector."""
    rows = []
    for i, text in enumerate(texts):
        completion = Completion(f"p{i}", text, "length", adapter=adapter)
        rows.append((Prompt(f"p{i}", text="Say something."), completion, detect(text)))
    store.add_samples(rows)


def promtool_check(metrics: Metrics) -> subprocess.CompletedProcess:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed: `apt-get install prometheus` (make test does it)"
    return subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(metrics.registry),
        capture_output=True,
    )


def test_a_whole_cycle_is_counted_as_the_database_records_it(config: LoopdConfig) -> None:
    inputs = resolve_inputs(config)
    store = Store(config.db_path)
    metrics = Metrics(store, adapter_prefix=config.deploy.adapter_prefix)
    loop = Loop(
        config,
        inputs,
        backend=LocalBackend(inputs.base_model, threads=1),
        store=store,
        metrics=metrics,
    )
    # nothing trained or deployed yet: those series are absent, not zero
    for absent in (
        "loopd_last_round_dpo_loss",
        "loopd_last_successful_round_timestamp_seconds",
        "loopd_last_deployment_timestamp_seconds",
    ):
        assert value(metrics, absent) is None
    assert value(metrics, "loopd_live_adapter_info", version="0", name="base") == 1

    loop.sample_round()
    held = samples_by_adapter_and_outcome(store)
    assert ("base", "degenerate") in held and ("base", "clean") in held  # the model loops
    for (adapter, outcome), count in held.items():
        assert value(metrics, "loopd_samples_total", adapter=adapter, outcome=outcome) == count
    assert value(metrics, "loopd_pairs_total") == one(store, "SELECT COUNT(*) AS v FROM pairs")
    assert value(metrics, "loopd_pending_pairs") == one(
        store, "SELECT COUNT(*) AS v FROM pairs WHERE trained_round IS NULL"
    )
    assert value(metrics, "loopd_pending_pairs") > 0
    base_rate = one(store, "SELECT AVG(degenerate) AS v FROM samples WHERE adapter IS NULL")
    assert value(metrics, "loopd_degeneration_rate", adapter="base") == pytest.approx(base_rate)

    report = loop.training_round()
    assert report.status == "promoted", report.decision and report.decision.reason
    [row] = store.rounds()
    trl = json.loads(row["train_metrics"])
    assert trl == report.train.metrics  # what TRL logged last is kept with the round
    assert value(metrics, "loopd_last_round_dpo_loss") == trl["loss"]
    assert value(metrics, "loopd_last_round_reward_margin") == trl["rewards_margins"]
    assert value(metrics, "loopd_last_round_reward_accuracy") == trl["rewards_accuracies"]
    assert value(metrics, "loopd_training_rounds_total", status="promoted") == 1
    assert value(metrics, "loopd_training_rounds_in_progress", status="running") == 0
    assert value(metrics, "loopd_last_successful_round_timestamp_seconds") == one(
        store, "SELECT created_at AS v FROM adapter_versions WHERE round_id = ?", [row["id"]]
    )
    assert value(metrics, "loopd_gate_decisions_total", outcome="promote", source="gate") == one(
        store, "SELECT COUNT(*) AS v FROM decisions WHERE source = 'gate' AND promote = 1"
    )
    assert value(metrics, "loopd_deployments_total", source="gate") == 1
    assert value(metrics, "loopd_last_deployment_timestamp_seconds") == one(
        store, "SELECT at AS v FROM events WHERE kind = 'deployed'"
    )
    live = loop.deployer.live_name()
    version = str(report.candidate.version)
    assert value(metrics, "loopd_live_adapter_info", version=version, name=live) == 1
    assert value(metrics, "loopd_live_adapter_info", version="0", name="base") is None
    assert value(metrics, "loopd_live_adapter_version") == report.candidate.version
    assert value(metrics, "loopd_pending_pairs") == 0

    loop.sample_round()  # the deployed adapter answers now: its own series
    held = samples_by_adapter_and_outcome(store)
    assert {adapter for adapter, _ in held} == {"base", live}
    for (adapter, outcome), count in held.items():
        assert value(metrics, "loopd_samples_total", adapter=adapter, outcome=outcome) == count
    live_rate = one(store, "SELECT AVG(degenerate) AS v FROM samples WHERE adapter = ?", [live])
    assert value(metrics, "loopd_degeneration_rate", adapter=live) == pytest.approx(live_rate)

    # what only the process saw: one round trained, one swap, every detection timed
    assert value(metrics, "loopd_training_seconds_count") == 1
    assert value(metrics, "loopd_training_seconds_sum") >= report.train.seconds  # wall ⊇ steps
    assert value(metrics, "loopd_adapter_swap_seconds_count") == 1
    detected = one(store, "SELECT COUNT(*) AS v FROM samples") + one(
        store, "SELECT COUNT(*) AS v FROM heldout_answers"
    )
    assert value(metrics, "loopd_detection_seconds_count") >= detected
    assert value(metrics, "loopd_backend_errors_total", kind="RuntimeError") is None

    linted = promtool_check(metrics)
    assert linted.returncode == 0 and not linted.stdout and not linted.stderr, linted


def test_sample_counters_outlive_retention_and_bound_the_adapter_label(store: Store) -> None:
    metrics = Metrics(store, adapter_prefix="loopd")
    store_answers(store, None, [LOOP_TEXT, "Fine, thanks."])
    store_answers(store, "loopd-v0003", ["Hello there.", "All good.", LOOP_TEXT])
    store_answers(store, "my-client-model", ["Hi."])  # an ingested batch names any model
    store_answers(store, "another-client-model", [LOOP_TEXT])
    expected = {
        ("base", "degenerate"): 1,
        ("base", "clean"): 1,
        ("loopd-v0003", "clean"): 2,
        ("loopd-v0003", "degenerate"): 1,
        ("other", "clean"): 1,
        ("other", "degenerate"): 1,
    }
    for (adapter, outcome), count in expected.items():
        assert value(metrics, "loopd_samples_total", adapter=adapter, outcome=outcome) == count
    assert value(metrics, "loopd_degeneration_rate", adapter="loopd-v0003") == pytest.approx(1 / 3)
    assert value(metrics, "loopd_degeneration_rate", adapter="other") == 0.5

    store.add_pairs(
        [], handled_sample_ids=[r["id"] for r in store.db.query("SELECT id FROM samples")]
    )
    assert store.delete_excess_samples(keep=0) == 7  # retention drops every sample
    for (adapter, outcome), count in expected.items():
        assert value(metrics, "loopd_samples_total", adapter=adapter, outcome=outcome) == count
    assert value(metrics, "loopd_degeneration_rate", adapter="base") is None  # nothing recent


def test_the_rate_by_adapter_counts_each_adapters_newest_samples_only(store: Store) -> None:
    store_answers(store, None, [LOOP_TEXT] * 3)
    store_answers(store, "loopd-v0001", [LOOP_TEXT, LOOP_TEXT, "Hello.", "Fine."])
    store_answers(store, None, ["Clean.", "Also clean."])
    # window 2: the base's newest two are clean, v0001's newest two clean as well
    assert store.recent_loops_by_adapter(window=2) == {None: (0, 2), "loopd-v0001": (0, 2)}
    assert store.recent_loops_by_adapter(window=3) == {None: (1, 3), "loopd-v0001": (1, 3)}
    # only names among the newest ``scan`` samples are reported
    assert store.recent_loops_by_adapter(window=3, scan=2) == {None: (0, 2)}


def test_tallies_are_backfilled_from_a_database_that_predates_them(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite_utils.Database(path)
    migrations.apply(old, stop_before="m008_metric_tallies")
    old["prompts"].insert({"id": "p", "text": "Say something."})
    for adapter, degenerate in [(None, 1), (None, 0), (None, 0), ("loopd-v0002", 1)]:
        old["samples"].insert({"prompt_id": "p", "adapter": adapter, "degenerate": degenerate})
    old.close()

    metrics = Metrics(Store(path))
    assert value(metrics, "loopd_samples_total", adapter="base", outcome="clean") == 2
    assert value(metrics, "loopd_samples_total", adapter="base", outcome="degenerate") == 1
    assert value(metrics, "loopd_samples_total", adapter="loopd-v0002", outcome="degenerate") == 1


class UnavailableBackend(LocalBackend):
    """The real engine, with serving gone: every generation fails as vLLM's would."""

    def generate(self, requests):
        raise ServingUnavailableError("no endpoint answered within the retry budget")


def test_serving_errors_are_counted_by_kind(config: LoopdConfig) -> None:
    inputs = resolve_inputs(config)
    store = Store(config.db_path)
    loop = Loop(
        config, inputs, backend=UnavailableBackend(inputs.base_model, threads=1), store=store
    )
    with pytest.raises(ServingUnavailableError):
        loop.sample_round()  # unobserved without metrics: the loop behaves as ever
    metrics = Metrics(store)
    loop.attach_metrics(metrics)
    with pytest.raises(ServingUnavailableError):
        loop.sample_round()
    assert value(metrics, "loopd_backend_errors_total", kind="unavailable") == 1
    with pytest.raises(KeyError):
        loop.serving.unload_adapter("loopd-v0009")  # the local engine's own error: its class
    assert value(metrics, "loopd_backend_errors_total", kind="KeyError") == 1


def test_the_process_metrics_start_where_the_daemon_expects_them(store: Store) -> None:
    metrics = Metrics(store)
    for result in ("applied", "rejected", "unchanged"):
        assert value(metrics, "loopd_config_reloads_total", result=result) == 0
    assert value(metrics, "loopd_config_generation") == 1
    assert value(metrics, "loopd_jobs_paused") == 0
    metrics.job_last_success.labels("sample").set(1_700_000_000)
    metrics.job_runs.labels("sample", "ok").inc()
    assert value(metrics, "loopd_job_last_success_timestamp_seconds", job_name="sample") == 1.7e9
    assert value(metrics, "loopd_pinned_version") == -1
    assert value(metrics, "loopd_training_rounds_in_progress", status="canary") == 0
    linted = promtool_check(metrics)  # an empty database's page lints clean too
    assert linted.returncode == 0 and not linted.stdout and not linted.stderr, linted

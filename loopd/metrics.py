"""Prometheus metrics: what the database knows, read at scrape time, plus what only the
process knows, kept on one daemon's registry.

Everything countable that the database records (samples, pairs, rounds, decisions,
deployments, rollbacks, the live adapter) comes from SQLite on every scrape through
``StoreCollector``, so it is never stale and survives restarts. Sample totals come from
tallies kept beside the samples (``sample_tallies``), so retention never lowers them.

What only the process sees (how long detection, training and swaps take, serving errors,
job runs, config reloads) lives in ``prometheus_client`` objects on the registry one
``Metrics`` owns, never in module globals, so tests and several daemons in one process
do not collide. ``Loop.attach_metrics`` hands that instance to the loop's stages.

Names follow Prometheus conventions: base units in the name (``_seconds``), counters
exposed as ``_total``, ``_info`` gauges with the value 1; the exposition passes
``promtool check metrics`` (``tests/test_metrics.py``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loopd.store import RECENT_SCAN, RECENT_WINDOW, Store

BASE = "base"  # the ``adapter`` label of the bare base model
OTHER = "other"  # of serving names loopd did not make (ingested samples name any model)
IN_PROGRESS = ("running", "canary")  # round statuses that change again later
CONFIG_RELOAD_RESULTS = ("applied", "rejected", "unchanged")
DEFAULT_PREFIX = "loopd"  # ``deploy.adapter_prefix``'s default

# one call of the detector: ~0.1–10 ms on a CPU; a slow one is worth seeing
DETECTION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# a round's training child: seconds for the embedded model, an hour for a real one
TRAINING_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
# load → probe → switch: ~10 ms for an in-process LoRA, seconds over HTTP under load
SWAP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
JOB_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)


class StoreCollector(Collector):
    """Reads the database on every scrape; every family is one or two cheap queries.

    ``adapter_prefix`` is ``deploy.adapter_prefix``: serving names ``<prefix>-vNNNN``
    keep their own ``adapter`` label; the base model is ``base``; any other name (an
    ingested batch may name any model) is ``other``, so clients cannot grow the label
    set without bound.
    """

    def __init__(self, store: Store, *, adapter_prefix: str = DEFAULT_PREFIX):
        self.store = store
        self.prefix = adapter_prefix
        self.ours = re.compile(rf"{re.escape(adapter_prefix)}-v\d+")

    def adapter_label(self, name: str | None) -> str:
        if not name:  # None; '' only from an ingested batch, tallied with the base too
            return BASE
        return name if self.ours.fullmatch(name) else OTHER

    def collect(self) -> Iterator[Metric]:
        yield from self._samples()
        yield from self._rounds()
        yield from self._deployments()

    def _samples(self) -> Iterator[Metric]:
        samples = CounterMetricFamily(
            "loopd_samples",
            "Completions sampled and stored, by the serving name that answered and whether "
            "it degenerated; retention does not lower it.",
            labels=["adapter", "outcome"],
        )
        for (adapter, outcome), n in _summed(
            ((self.adapter_label(name), "degenerate" if loop else "clean"), n)
            for (name, loop), n in self.store.sample_tallies().items()
        ):
            samples.add_metric([adapter, outcome], n)
        yield samples
        counts = self.store.counts()
        yield CounterMetricFamily("loopd_pairs", "DPO pairs built.", value=counts["pairs"])
        yield GaugeMetricFamily(
            "loopd_pending_pairs", "Pairs not yet trained on.", value=counts["fresh_pairs"]
        )
        rate = GaugeMetricFamily(
            "loopd_degeneration_rate",
            f"Share of each serving name's last {RECENT_WINDOW} samples that degenerated "
            f"(names among the newest {RECENT_SCAN} samples).",
            labels=["adapter"],
        )
        recent = _summed(
            (self.adapter_label(name), counts)
            for name, counts in self.store.recent_loops_by_adapter().items()
        )
        for adapter, (degenerate, n) in recent:
            rate.add_metric([adapter], degenerate / n)
        yield rate
        by_kind = GaugeMetricFamily(
            "loopd_degeneration_rate_by_kind",
            f"Share of the last {RECENT_WINDOW} samples that degenerated, by prompt kind.",
            labels=["kind"],
        )
        for kind, row in self.store.rates_by_kind().items():
            by_kind.add_metric([kind], row["rate"])
        yield by_kind

    def _rounds(self) -> Iterator[Metric]:
        by_status = sorted(self.store.rounds_by_status().items())
        rounds = CounterMetricFamily(
            "loopd_training_rounds",
            "Training rounds that ended, by status (promoted, rejected, blocked, failed, ...).",
            labels=["status"],
        )
        running = GaugeMetricFamily(
            "loopd_training_rounds_in_progress",
            "Rounds not ended yet: training and gating (running) or a candidate answering "
            "its canary share (canary).",
            labels=["status"],
        )
        for status in IN_PROGRESS:
            running.add_metric([status], dict(by_status).get(status, 0))
        for status, count in by_status:
            if status not in IN_PROGRESS:
                rounds.add_metric([status], count)
        yield rounds
        yield running
        last = self.store.last_trained_round()
        if last is None:
            return
        yield GaugeMetricFamily(
            "loopd_last_successful_round_timestamp_seconds",
            "When the newest round finished training (its adapter published), whatever the "
            "gate decided after; Unix time.",
            value=last["trained_at"],
        )
        trl = last["train_metrics"]
        for name, value, help_text in (
            ("dpo_loss", trl.get("loss", last["final_loss"]), "DPO loss at its last logged step"),
            ("reward_margin", trl.get("rewards_margins"), "mean reward margin (chosen - rejected)"),
            ("reward_accuracy", trl.get("rewards_accuracies"), "share of pairs ranked right"),
        ):
            if value is not None:
                yield GaugeMetricFamily(
                    f"loopd_last_round_{name}",
                    f"The newest trained round's {help_text}, as TRL logged it.",
                    value=value,
                )

    def _deployments(self) -> Iterator[Metric]:
        decisions = CounterMetricFamily(
            "loopd_gate_decisions",
            "Promotion decisions by outcome and source (gate: a round's candidate; canary: "
            "its live share; watch: after a deployment, reject = rolled back).",
            labels=["outcome", "source"],
        )
        for (source, promote), n in sorted(self.store.decisions_by_outcome().items()):
            decisions.add_metric(["promote" if promote else "reject", source], n)
        yield decisions
        yield _by_source(
            "loopd_deployments",
            "Adapters made live, by who asked (gate: promoted automatically; operator).",
            self.store.deployments_by_source(),
        )
        yield _by_source(
            "loopd_rollbacks",
            "Rollbacks to the parent adapter, by who asked (watch, operator, integrity).",
            self.store.rollbacks_by_source(),
        )
        live = self.store.live_version()
        yield GaugeMetricFamily(
            "loopd_live_adapter_version",
            "Adapter version serving now (0 = bare base model).",
            value=live or 0,
        )
        info = GaugeMetricFamily(
            "loopd_live_adapter_info",
            "The adapter serving now: its version (0 = base) and serving name; always 1.",
            labels=["version", "name"],
        )
        name = BASE if live is None else f"{self.prefix}-v{live:04d}"  # as Deployer names it
        info.add_metric([str(live or 0), name], 1)
        yield info
        pinned = self.store.pinned_version()
        yield GaugeMetricFamily(
            "loopd_pinned_version",
            "Version deployments are pinned to (0 = base model, -1 = not pinned).",
            value=-1 if pinned is None else pinned,
        )
        deployed_at = self.store.last_event_at("deployed")
        if deployed_at is not None:
            yield GaugeMetricFamily(
                "loopd_last_deployment_timestamp_seconds",
                "When an adapter was last deployed; Unix time.",
                value=deployed_at,
            )


def _by_source(name: str, documentation: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["source"])
    for source, count in sorted(counts.items()):
        family.add_metric([source], count)
    return family


def _summed(items: Iterator[tuple[object, object]]) -> list[tuple[object, object]]:
    """Values added up per key (ints, or tuples of ints elementwise), keys sorted: several
    names can share one label (``other``)."""
    sums: dict = {}
    for key, value in items:
        if key not in sums:
            sums[key] = value
        elif isinstance(value, tuple):
            sums[key] = tuple(a + b for a, b in zip(sums[key], value, strict=True))
        else:
            sums[key] += value
    return sorted(sums.items())


class Metrics:
    """One daemon's registry: the store collector plus what only the process knows.

    The daemon sets ``job_last_success``, ``config_reloads``, ``config_generation``,
    ``jobs_paused`` and ``serving_up``; the loop's stages observe ``detection_seconds``,
    ``training_seconds``, ``adapter_swap_seconds`` and ``backend_errors`` once
    ``Loop.attach_metrics`` gave them this instance.
    """

    def __init__(self, store: Store, *, adapter_prefix: str = DEFAULT_PREFIX):
        self.registry = registry = CollectorRegistry()
        registry.register(StoreCollector(store, adapter_prefix=adapter_prefix))
        self.job_runs = Counter(
            "loopd_job_runs",
            "Scheduled job runs by outcome (ok, error).",
            ["job_name", "outcome"],
            registry=registry,
        )
        self.job_seconds = Histogram(
            "loopd_job_duration_seconds",
            "Wall time of scheduled jobs.",
            ["job_name"],
            buckets=JOB_BUCKETS,
            registry=registry,
        )
        self.job_last_success = Gauge(
            "loopd_job_last_success_timestamp_seconds",
            "When each job last finished without an error; Unix time.",
            ["job_name"],
            registry=registry,
        )
        self.detection_seconds = Histogram(
            "loopd_detection_seconds",
            "Time the detector took on one completion.",
            buckets=DETECTION_BUCKETS,
            registry=registry,
        )
        self.training_seconds = Histogram(
            "loopd_training_seconds",
            "Wall time of a round's training child (start to adapter written), rounds that "
            "trained only.",
            buckets=TRAINING_BUCKETS,
            registry=registry,
        )
        self.adapter_swap_seconds = Histogram(
            "loopd_adapter_swap_seconds",
            "Time a deployment took to load, probe and switch to an adapter.",
            buckets=SWAP_BUCKETS,
            registry=registry,
        )
        self.backend_errors = Counter(
            "loopd_backend_errors",
            "Serving backend calls that raised, by error kind (the backend's own kind, else "
            "the exception class).",
            ["kind"],
            registry=registry,
        )
        self.config_reloads = Counter(
            "loopd_config_reloads",
            "Config reloads by result (applied, rejected, unchanged).",
            ["result"],
            registry=registry,
        )
        for result in CONFIG_RELOAD_RESULTS:
            self.config_reloads.labels(result)
        self.config_generation = Gauge(
            "loopd_config_generation",
            "Which config is in force: 1 at start, one more per applied reload.",
            registry=registry,
        )
        self.config_generation.set(1)
        self.jobs_paused = Gauge(
            "loopd_jobs_paused",
            "1 while an operator has paused the scheduled jobs, else 0.",
            registry=registry,
        )
        self.serving_up = Gauge(
            "loopd_serving_up",
            "1 while the serving backend answers its health check, else 0.",
            registry=registry,
        )

    def backend_error(self, error: BaseException) -> None:
        """Count one failed serving call under its kind."""
        self.backend_errors.labels(error_kind(error)).inc()


def error_kind(error: BaseException) -> str:
    """A backend error's short ``kind`` when it has one (vLLM's), else its class name."""
    kind = getattr(error, "kind", None)
    return kind if isinstance(kind, str) and kind else type(error).__name__

"""Prometheus metrics: counts read from the database at scrape time, plus job counters.

Totals (samples, loops, pairs, rounds) come from SQLite on every scrape through a custom
collector, so they are never stale and survive daemon restarts. What only the process
knows (job runs, failures, durations) lives in counters on a registry owned by one daemon,
never in module globals, so tests and several daemons in one process do not collide.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from loopd.store import RECENT_WINDOW, Store


class StoreCollector(Collector):
    def __init__(self, store: Store):
        self.store = store

    def collect(self) -> Iterator[Metric]:
        counts = self.store.counts()
        yield _counter("loopd_samples", "Completions sampled and stored.", counts["samples"])
        yield _counter(
            "loopd_degenerate_samples",
            "Stored completions that degenerated.",
            counts["degenerate_samples"],
        )
        yield _counter("loopd_pairs", "DPO pairs built.", counts["pairs"])
        yield _gauge("loopd_fresh_pairs", "Pairs not yet trained on.", counts["fresh_pairs"])
        rounds = CounterMetricFamily(
            "loopd_training_rounds", "Training rounds by outcome.", labels=["status"]
        )
        for status, count in sorted(self.store.rounds_by_status().items()):
            rounds.add_metric([status], count)
        yield rounds
        yield _gauge(
            "loopd_live_adapter_version",
            "Adapter version serving now (0 = bare base model).",
            self.store.live_version() or 0,
        )
        yield _gauge(
            "loopd_degeneration_rate",
            f"Share of the last {RECENT_WINDOW} samples that degenerated.",
            self.store.recent_degeneration_rate(),
        )
        yield from self._deployment_metrics()

    def _deployment_metrics(self) -> Iterator[Metric]:
        by_kind = GaugeMetricFamily(
            "loopd_degeneration_rate_by_kind",
            f"Loop rate of the last {RECENT_WINDOW} samples, by prompt kind.",
            labels=["kind"],
        )
        for kind, row in self.store.rates_by_kind().items():
            by_kind.add_metric([kind], row["rate"])
        yield by_kind
        rollbacks = CounterMetricFamily(
            "loopd_rollbacks", "Rollbacks to the parent adapter, by who asked.", labels=["source"]
        )
        for source, count in sorted(self.store.rollbacks_by_source().items()):
            rollbacks.add_metric([source], count)
        yield rollbacks
        pinned = self.store.pinned_version()
        yield _gauge(
            "loopd_pinned_version",
            "Version deployments are pinned to (0 = base model, -1 = not pinned).",
            -1 if pinned is None else pinned,
        )


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class Metrics:
    """One daemon's registry: the store collector plus per-job counters."""

    def __init__(self, store: Store):
        self.registry = CollectorRegistry()
        self.registry.register(StoreCollector(store))
        self.job_runs = Counter(
            "loopd_job_runs",
            "Scheduled job runs by outcome.",
            ["job", "outcome"],
            registry=self.registry,
        )
        self.job_seconds = Histogram(
            "loopd_job_duration_seconds",
            "Wall time of scheduled jobs.",
            ["job"],
            buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600),
            registry=self.registry,
        )

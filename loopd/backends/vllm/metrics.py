"""The vLLM backend's Prometheus metrics, in one place.

The HTTP pool, the adapter life cycle and the generation path all count into the same
``VllmMetrics``; keeping the definitions together keeps the metric names and labels (which
dashboards and alerts depend on) in one reviewable list.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class VllmMetrics:
    """The backend's own counters, registered on the daemon's registry (or a private one)."""

    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "loopd_vllm_requests",
            "HTTP calls to vLLM by operation and outcome.",
            ["endpoint", "operation", "outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "loopd_vllm_failures",
            "Failed vLLM calls by error kind.",
            ["endpoint", "operation", "error"],
            registry=registry,
        )
        self.retries = Counter(
            "loopd_vllm_retries", "Retries of vLLM calls.", ["operation"], registry=registry
        )
        self.breaker_state = Gauge(
            "loopd_vllm_breaker_state",
            "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open.",
            ["endpoint"],
            registry=registry,
        )
        self.breaker_opened = Counter(
            "loopd_vllm_breaker_opened",
            "Times an endpoint's breaker opened.",
            ["endpoint"],
            registry=registry,
        )
        self.adapter_ops = Counter(
            "loopd_vllm_adapter_operations",
            "Adapter loads, unloads, reloads and probes by outcome (error kind on failure).",
            ["operation", "outcome"],
            registry=registry,
        )
        self.load_seconds = Histogram(
            "loopd_vllm_adapter_load_seconds",
            "Time to load and probe an adapter on all endpoints.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=registry,
        )
        self.drain_seconds = Histogram(
            "loopd_vllm_adapter_drain_seconds",
            "Time an unload waited for in-flight requests on the old adapter.",
            buckets=(0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60),
            registry=registry,
        )
        self.restarts = Counter(
            "loopd_vllm_restarts_detected",
            "Times an endpoint had lost adapters loopd loaded (a vLLM restart).",
            ["endpoint"],
            registry=registry,
        )
        self.inflight = Gauge(
            "loopd_vllm_inflight_requests", "Generation requests in flight.", registry=registry
        )
        self.completions = Counter(
            "loopd_vllm_completions",
            "Completions received by finish reason (vLLM's own 'repetition' included).",
            ["finish_reason"],
            registry=registry,
        )

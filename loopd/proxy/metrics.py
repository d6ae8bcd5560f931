"""The proxy's Prometheus metrics, on the daemon's registry (one ``/metrics`` for both)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ProxyMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.requests = Counter(
            "loopd_proxy_requests",
            "Proxy requests by route and HTTP status.",
            ["route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "loopd_proxy_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rerouted = Counter(
            "loopd_proxy_rerouted",
            "Requests sent again to the live adapter after the one they reached was retired.",
            registry=registry,
        )
        self.recorded = Counter(
            "loopd_proxy_recorded", "Completions the proxy stored.", registry=registry
        )
        self.recorded_degenerate = Counter(
            "loopd_proxy_recorded_degenerate",
            "Stored proxy completions that looped.",
            registry=registry,
        )
        self.dropped = Counter(
            "loopd_proxy_recording_dropped",
            "Served completions not stored, by reason.",
            ["reason"],
            registry=registry,
        )
        self.write_retries = Counter(
            "loopd_proxy_write_retries", "Failed batch writes, retried.", registry=registry
        )
        self.queue_depth = Gauge(
            "loopd_proxy_queue_depth", "Completions waiting to be stored.", registry=registry
        )
        self.stream_loops = Counter(
            "loopd_proxy_stream_loops",
            "Loops found in streams, by what was done (log, stop).",
            ["action"],
            registry=registry,
        )
        self.tokens_saved = Counter(
            "loopd_proxy_tokens_saved",
            "Tokens not generated because a looping stream was stopped (max_tokens minus "
            "tokens generated when it stopped).",
            registry=registry,
        )
        self.ingested = Counter(
            "loopd_ingest_samples", "Samples accepted by POST /v1/loopd/samples.", registry=registry
        )

"""The recording policy: never blocks serving, stores everything it accepted, counts the
rest; and the router sends every version name to the live adapter."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from loopd.detect import detect
from loopd.proxy.metrics import ProxyMetrics
from loopd.proxy.recorder import SampleRecorder
from loopd.proxy.routing import ModelRouter
from loopd.store import Store
from loopd.types import Completion, Prompt


def completion(text: str) -> Completion:
    return Completion("p", text, "length")


def test_a_full_queue_drops_and_counts_and_keeps_what_it_accepted(store: Store) -> None:
    registry = CollectorRegistry()
    recorder = SampleRecorder(
        store, lambda c: detect(c.text), ProxyMetrics(registry), queue_size=2, batch=8
    )
    prompt = Prompt("p", text="doc:")
    offered = [
        recorder.offer(prompt, completion(t))
        for t in ("a b c", "the cat sat on the mat. " * 30, "late")
    ]
    assert offered == [True, True, False]  # the writer was not running: the queue filled
    assert (
        registry.get_sample_value("loopd_proxy_recording_dropped_total", {"reason": "queue_full"})
        == 1
    )
    recorder.start()
    recorder.flush()
    recorder.stop()
    assert store.counts()["samples"] == 2
    assert store.counts()["degenerate_samples"] == 1
    assert registry.get_sample_value("loopd_proxy_queue_depth") == 0


def test_every_version_name_reaches_the_live_adapter() -> None:
    live = ["loopd-v0003"]
    reads = []

    def live_name() -> str:
        reads.append(1)
        return live[0]

    router = ModelRouter("loopd", live_name, version_prefix="loopd", ttl_s=3600)
    assert router.resolve("loopd") == router.resolve("loopd-v0001") == "loopd-v0003"
    live[0] = "loopd-v0004"
    assert router.resolve("loopd") == "loopd-v0003"  # within the ttl: the cached name
    assert router.resolve("loopd", fresh=True) == "loopd-v0004"
    assert len(reads) == 2
    assert not router.accepts("gpt-4") and not router.accepts("loopd-v1")

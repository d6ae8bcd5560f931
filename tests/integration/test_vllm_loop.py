"""The whole loop over a real vLLM server: sample, detect, store, pair, train, gate, deploy."""

from __future__ import annotations

import pytest

from loopd.backends.vllm import VllmBackend, VllmConfig
from loopd.config import LoopdConfig
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.store import Store

from .conftest import SERVED_NAME

pytestmark = pytest.mark.vllm


def test_a_full_cycle_through_vllm_deploys_into_the_server(
    config: LoopdConfig, vllm_config: VllmConfig
) -> None:
    inputs = resolve_inputs(config)
    store = Store(config.db_path)
    with VllmBackend(
        vllm_config,
        base_model_name=SERVED_NAME,
        on_event=lambda kind, payload: store.record_event(kind, **payload),
    ) as backend:
        loop = Loop(config, inputs, backend=backend, store=store)
        try:
            sampled = loop.sample_round()
            assert 0 < sampled.degenerate < sampled.samples  # vLLM serves a model that loops
            report = loop.training_round()
            assert report.status == "promoted", report.decision and report.decision.reason
            live = loop.deployer.live_name()
            assert live in backend.adapters()  # deployed into the server itself
            assert (
                report.decision.candidate.degeneration_rate < report.decision.live.degeneration_rate
            )
            loop.sample_round()
            served = {r["adapter"] for r in store.db.query("SELECT DISTINCT adapter FROM samples")}
            assert served == {None, live}
            kinds = {e["kind"] for e in store.events(100)}
            assert {"adapter_loaded", "gate", "deployed"} <= kinds
        finally:
            for name in backend.adapters():
                backend.unload_adapter(name)

"""One whole cycle through real parts: tiny model, real TRL, real SQLite, real PEFT serving."""

from __future__ import annotations

from loopd.backends import AdapterLoadError
from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.store import Store


def test_a_full_cycle_finds_loops_trains_gates_and_deploys(config: LoopdConfig) -> None:
    inputs = resolve_inputs(config)
    backend = LocalBackend(inputs.base_model, threads=1)
    loop = Loop(config, inputs, backend=backend, store=Store(config.db_path))
    before = loop.evaluate(None)
    assert before.degeneration_rate >= 0.2  # the embedded model really loops

    sampled = loop.sample_round()
    counts = loop.store.counts()
    assert counts["samples"] == sampled.samples == config.sampling.prompts_per_round
    assert 0 < counts["degenerate_samples"] < counts["samples"]  # loops and clean ones, all kept
    assert counts["pairs"] == sampled.pairs == counts["degenerate_samples"]
    assert loop.ready_to_train()

    report = loop.training_round()
    assert report.status == "promoted", report.decision and report.decision.reason
    assert report.train.steps > 0 and report.candidate.path.is_dir()
    assert report.decision.candidate.degeneration_rate < before.degeneration_rate
    assert report.decision.candidate.cer <= before.cer

    live = loop.deployer.live_name()
    assert live == f"loopd-v{report.candidate.version:04d}" and live in backend.adapters()
    assert loop.store.count_fresh_pairs() == 0
    loop.sample_round()  # serving now answers with the deployed adapter
    adapters = {r["adapter"] for r in loop.store.db.query("SELECT DISTINCT adapter FROM samples")}
    assert adapters == {None, live}
    kinds = [e["kind"] for e in loop.store.events()]
    assert kinds[:2] == ["deployed", "gate"]


def test_a_failed_round_leaves_the_deployed_adapter_serving(config: LoopdConfig) -> None:
    broken = config.model_copy(
        update={"training": config.training.model_copy(update={"timeout_seconds": 0.5})}
    )
    inputs = resolve_inputs(broken)
    loop = Loop(
        broken,
        inputs,
        backend=LocalBackend(inputs.base_model, threads=1),
        store=Store(broken.db_path),
    )
    loop.sample_round()
    report = loop.training_round()
    assert report.status == "failed" and "killed" in report.error
    assert (
        loop.deployer.live() is None and loop.store.count_fresh_pairs() > 0
    )  # pairs kept for a retry
    assert loop.registry.versions_on_disk() == [] and not list(loop.registry.root.iterdir())


def test_a_round_that_fails_the_same_way_twice_is_not_retried_as_is(config: LoopdConfig) -> None:
    no_backoff = {"timeout_seconds": 0.5, "retry_backoff_seconds": 0}
    broken = config.model_copy(update={"training": config.training.model_copy(update=no_backoff)})
    inputs = resolve_inputs(broken)
    backend = LocalBackend(inputs.base_model, threads=1)
    loop = Loop(broken, inputs, backend=backend, store=Store(broken.db_path))
    loop.sample_round()
    assert loop.training_round().status == "failed"
    assert loop.ready_to_train()  # one failure may be bad luck: retried
    assert loop.training_round().status == "failed"
    assert not loop.ready_to_train()
    assert (
        "quarantined: the last 2 rounds on these pairs and settings failed the same way (timeout)"
        in loop.training_blocked()
    )
    [first, second] = loop.store.rounds()
    assert first["error_kind"] == second["error_kind"] == "timeout"

    fixed = Loop(config, inputs, backend=backend, store=loop.store)  # settings changed
    assert fixed.training_blocked() is None and fixed.ready_to_train()
    loop.sample_round()  # ... or new pairs arrived
    assert loop.training_blocked() is None


def test_the_gate_rejects_an_adapter_that_cures_loops_by_truncating(config: LoopdConfig) -> None:
    """Chosen = the output cut before its loop, trained as a finished answer, teaches
    "stop early": fewer loops, even a lower CER than the looping base, and still a
    regression the gate must refuse. (loopd itself trains a cut that ends mid-sentence
    without the end token, so this adapter is made on purpose: every cut marked ended.)"""
    cfg = config.model_copy(
        update={
            "pairing": config.pairing.model_copy(
                update={"chosen_order": ["truncate"], "min_truncated_chars": 1}
            ),
            "sampling": config.sampling.model_copy(update={"prompts_per_round": 160}),
            "training": config.training.model_copy(update={"epochs": 4, "learning_rate": 3e-3}),
        }
    )
    inputs = resolve_inputs(cfg)
    loop = Loop(
        cfg, inputs, backend=LocalBackend(inputs.base_model, threads=1), store=Store(cfg.db_path)
    )
    loop.sample_round()
    loop.store.db.execute("UPDATE pairs SET chosen_eos = 1")
    report = loop.training_round()
    candidate, live = report.decision.candidate, report.decision.live
    assert candidate.degeneration_rate < live.degeneration_rate / 2  # loops "fixed"
    assert candidate.cer < live.cer  # CER alone would have promoted it
    assert report.status == "rejected" and "answers shortened" in report.decision.reason
    assert loop.deployer.live() is None  # the base model still serves
    assert loop.deployer.serving_name(report.candidate) not in loop.backend.adapters()


class RefusingBackend(LocalBackend):
    """Serving that refuses every new adapter, as vLLM does one whose rank is too large."""

    def load_adapter(self, name: str, path) -> None:
        raise AdapterLoadError(f"refused {name}: rank above --max-lora-rank")


def test_a_refused_candidate_ends_the_round_and_keeps_serving(config: LoopdConfig) -> None:
    inputs = resolve_inputs(config)
    backend = RefusingBackend(inputs.base_model, threads=1)
    loop = Loop(config, inputs, backend=backend, store=Store(config.db_path))
    loop.sample_round()
    report = loop.training_round()
    assert report.status == "eval_failed" and "rank above" in report.error
    assert loop.deployer.live() is None and backend.adapters() == []
    [round_row] = loop.store.rounds()
    assert round_row["status"] == "eval_failed" and round_row["candidate_version"] == 1
    assert loop.store.events()[0]["kind"] == "eval_failed"


class CountingBackend(LocalBackend):
    """Real serving that records each ``generate`` call's requests."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[list] = []

    def generate(self, requests):
        self.calls.append(list(requests))
        return super().generate(requests)


def test_pairing_asks_for_every_resample_in_one_batched_call(config: LoopdConfig) -> None:
    cfg = config.model_copy(
        update={
            "pairing": config.pairing.model_copy(update={"chosen_order": ["resample", "truncate"]})
        }
    )
    inputs = resolve_inputs(cfg)
    backend = CountingBackend(inputs.base_model, threads=1)
    loop = Loop(cfg, inputs, backend=backend, store=Store(cfg.db_path))
    report = loop.sample_round()
    sampling, resampling = backend.calls
    assert len(sampling) == cfg.sampling.prompts_per_round
    assert len(resampling) == report.degenerate > 0  # one request per loop, all at once
    assert all(r.n == cfg.pairing.resample_attempts and r.temperature > 0 for r in resampling)
    sources = {r["chosen_source"] for r in loop.store.db.query("SELECT chosen_source FROM pairs")}
    assert sources <= {"resample", "truncate"} and report.pairs > 0

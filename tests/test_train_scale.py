"""Training past one process, and honest about what it trained: real TRL rounds on the
embedded model under ``accelerate launch`` (two CPU ranks over gloo), lineage in every
manifest, replay at its configured ratio, reloads that reproduce outputs exactly, and
pruning that keeps what a rollback needs."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file
from test_train import pairs_from  # tests/ is on the path: pytest puts it there

from loopd.adapters import MANIFEST, AdapterRegistry
from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig, TrainingConfig
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.prune import prune_versions
from loopd.store import Store
from loopd.train import TrainingFailed, chosen_logps_fell, run_round, trainer_command
from loopd.types import AdapterVersion, GenerationRequest

SAMPLING_TRIES = 5  # sampling jobs at most, to find fresh loops after a promotion


def loop_for(config: LoopdConfig, **training: object) -> Loop:
    cfg = config.model_copy(update={"training": config.training.model_copy(update=training)})
    inputs = resolve_inputs(cfg)
    backend = LocalBackend(inputs.base_model, threads=1)
    return Loop(cfg, inputs, backend=backend, store=Store(cfg.db_path))


def manifest(version: AdapterVersion) -> dict:
    return json.loads((version.path / MANIFEST).read_text())


def sample_until_fresh(loop: Loop) -> int:
    for _ in range(SAMPLING_TRIES):
        loop.sample_round()
        if loop.store.count_fresh_pairs():
            break
    return loop.store.count_fresh_pairs()


def test_two_ranks_under_accelerate_train_an_adapter_that_is_deployed(
    config: LoopdConfig, tmp_path: Path
) -> None:
    loop = loop_for(config, launcher="accelerate", num_processes=2)
    loop.sample_round()
    report = loop.training_round()
    assert report.status == "promoted", report.decision and report.decision.reason
    assert loop.deployer.live_name() == loop.deployer.serving_name(report.candidate)
    trained = manifest(report.candidate)
    assert trained["metrics"]["ranks"] == 2 and trained["steps"] >= 1

    # the same kind of adapter one process makes: same files, tensors and shapes
    alone = run_round(
        loop.store.trained_pairs(),
        base_model=loop.inputs.base_model,
        init_adapter=None,
        out_dir=tmp_path / "one-rank",
        cfg=loop.cfg.training.model_copy(update={"launcher": "process", "num_processes": 1}),
    )
    assert alone.metrics["ranks"] == 1
    two = load_file(report.candidate.path / "adapter_model.safetensors")
    one = load_file(tmp_path / "one-rank" / "adapter_model.safetensors")
    assert {k: v.shape for k, v in two.items()} == {k: v.shape for k, v in one.items()}


def test_a_cancelled_accelerate_round_leaves_no_rank_behind(
    base_model: Path, embedded_dir: Path, tmp_path: Path
) -> None:
    """Ranks run in sessions of their own (torchrun starts them so): killing the launcher's
    process group cannot reach them; each rank's watchdog ends it with its launcher."""
    cancel = threading.Event()
    cfg = TrainingConfig(epochs=500, batch_size=4, launcher="accelerate", num_processes=2)
    with pytest.raises(TrainingFailed) as failed:
        run_round(
            pairs_from(embedded_dir), base_model=base_model, init_adapter=None,
            out_dir=tmp_path / "out", cfg=cfg, on_progress=lambda *_: cancel.set(), cancel=cancel,
        )  # fmt: skip
    assert failed.value.kind == "interrupted"

    def ranks_left() -> list[psutil.Process]:
        mine = str(tmp_path)  # every rank's command line names this round's job file
        return [
            p for p in psutil.process_iter(["cmdline"])
            if any(mine in part for part in p.info["cmdline"] or [])
        ]  # fmt: skip

    deadline = time.monotonic() + 120
    while ranks_left():
        assert time.monotonic() < deadline, [p.info["cmdline"] for p in ranks_left()]
        time.sleep(0.5)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_three_rounds_record_their_lineage_replay_at_the_ratio_and_reload_exactly(
    config: LoopdConfig,
) -> None:
    loop = loop_for(config, replay_fraction=0.5)
    store = loop.store
    reports = []
    for _ in range(3):
        assert sample_until_fresh(loop) > 0
        reports.append(loop.training_round())
    versions = [r.candidate for r in reports]
    assert all(v is not None for v in versions), [r.error for r in reports]
    rounds = {r["id"]: r for r in store.rounds()}
    trained_before: set[int] = set()
    for report, version in zip(reports, versions, strict=True):
        lineage = manifest(version)
        row = rounds[report.round_id]
        assert lineage["parent"] == row["parent_version"] == version.parent
        assert lineage["round_id"] == report.round_id
        fresh, replay = lineage["pairs"]["fresh"], lineage["pairs"]["replay"]
        assert len(fresh) == row["fresh_pairs"] and len(replay) == row["replay_pairs"]
        assert {p.id for p in store.trained_pairs([report.round_id])} == set(fresh)
        assert len(replay) == min(round(len(fresh) * 0.5), len(trained_before))
        assert set(replay) <= trained_before  # replay draws only pairs trained before
        trained_before |= set(fresh)
        assert set(lineage["libraries"]) >= {"torch", "transformers", "trl", "peft"}
        assert lineage["sha256"] and "adapter_model.safetensors" in lineage["sha256"]
        assert {"loss", "rewards_margins", "logps_chosen"} <= set(lineage["metrics"])
    hashes = [manifest(v)["pairs"]["sha256"] for v in versions]
    assert len(set(hashes)) == 3  # each round trained on a different set of pairs
    assert versions[1].parent == (versions[0].version if reports[0].status == "promoted" else None)
    assert_reloads_exactly(loop, versions[-1])


def assert_reloads_exactly(loop: Loop, version: AdapterVersion) -> None:
    """A version loaded from its folder in a fresh engine says what serving said."""
    prompts = loop.inputs.heldout[:16]
    requests = lambda name: [  # noqa: E731
        GenerationRequest(p, max_tokens=loop.cfg.serving.max_tokens, adapter=name) for p in prompts
    ]
    name = loop.deployer.serving_name(version)
    if name not in loop.backend.adapters():
        loop.backend.load_adapter(name, version.path)
    served = [c[0].text for c in loop.backend.generate(requests(name))]
    fresh_process = LocalBackend(loop.inputs.base_model, threads=1)
    fresh_process.load_adapter("reloaded", version.path)
    assert [c[0].text for c in fresh_process.generate(requests("reloaded"))] == served
    base = [c[0].text for c in fresh_process.generate(requests(None))]
    assert base != served  # the adapter changed what the model says


def publish_fake(registry: AdapterRegistry, store: Store, version: int, parent: int | None):
    staging = registry.root / f".staging-test-{version}"
    staging.mkdir(parents=True)
    (staging / "adapter_model.safetensors").write_bytes(b"weights %d" % version)
    published = registry.publish(staging, version=version, parent=parent, round_id=None, details={})
    store.add_adapter_version(published)
    return published


def test_pruning_keeps_the_live_version_its_parent_and_a_pinned_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "loopd.db")
    registry = AdapterRegistry(tmp_path / "adapters")
    for version in range(1, 8):
        publish_fake(registry, store, version, parent=version - 1 or None)
    store.record_event("pinned", version=2)  # as Deployer.pin records it
    store.record_event("deployed", version=6, source="operator")  # live v6, parent v5

    assert prune_versions(registry, store, keep=3) == [1, 3, 4, 7]  # oldest first
    assert registry.versions_on_disk() == [2, 5, 6]  # pinned, parent, live
    pruned = sorted(e["version"] for e in store.events(100) if e["kind"] == "pruned")
    assert pruned == [1, 3, 4, 7]
    assert prune_versions(registry, store, keep=3) == []  # nothing more to do
    assert prune_versions(registry, store, keep=2) == []  # never below what must stay
    assert registry.versions_on_disk() == [2, 5, 6]


@pytest.mark.parametrize(
    ("before", "after", "falls"),
    [(-1.0, -1.5, True), (-1.0, -0.8, False), (None, -1.0, False), (-1.0, None, False)],
)
def test_a_fall_in_chosen_log_probs_is_named(before, after, falls) -> None:
    previous = None if before is None else {"logps_chosen": before}
    current = {} if after is None else {"logps_chosen": after}
    warning = chosen_logps_fell(previous, current)
    assert (warning is not None) == falls
    if falls:
        assert "-1.000 to -1.500" in warning


def test_the_launcher_builds_accelerate_commands() -> None:
    alone = trainer_command(TrainingConfig())
    assert alone[1:] == ["-m", "loopd.backends.trl_dpo"]
    ranks = trainer_command(TrainingConfig(launcher="accelerate", num_processes=4))
    assert ranks[1:3] == ["-m", "accelerate.commands.launch"]
    assert ranks[ranks.index("--num_processes") + 1] == "4" and "--multi_gpu" in ranks
    assert ranks[-2:] == ["--module", "loopd.backends.trl_dpo"]
    config = Path(__file__).resolve().parents[1] / "deploy" / "accelerate" / "fsdp.yaml"
    sharded = trainer_command(
        TrainingConfig(launcher="accelerate", num_processes=8, accelerate_config=config)
    )
    assert sharded[sharded.index("--config_file") + 1] == str(config)
    assert "--multi_gpu" not in sharded  # the config file says how
    with pytest.raises(ValueError, match='launcher = "accelerate"'):
        TrainingConfig(num_processes=2)


def test_shipped_accelerate_configs_load() -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    folder = Path(__file__).resolve().parents[1] / "deploy" / "accelerate"
    kinds = {p.stem: load_config_from_file(str(p)).distributed_type for p in folder.glob("*.yaml")}
    assert {str(k).split(".")[-1] for k in kinds.values()} == {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    assert set(kinds) == {"ddp", "deepspeed-zero2", "deepspeed-zero3", "fsdp"}

"""Rollback, pins and the operator's ``loopd adapters`` verbs, on real adapters and serving.

Versions are real PEFT adapters (seeded noise in lora_B, so each answers differently)
published through the real registry into a real store; serving is the in-process engine;
the CLI runs as a subprocess, against the database alone and against a running daemon.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from loopd.adapters import AdapterRegistry
from loopd.backends.local import LocalBackend
from loopd.config import LoopdConfig
from loopd.daemon import Daemon
from loopd.deploy import Deployer, DeployRefused
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.store import Store
from loopd.types import AdapterVersion, GenerationRequest, Prompt

PROMPTS = [Prompt(id=f"q{i}", text=f"the {word} and the") for i, word in enumerate("abcdef")]


def publish(
    config: LoopdConfig, store: Store, folder: Path, version: int, parent: int | None
) -> AdapterVersion:
    """Publish a saved adapter folder as ``version`` the way a round does."""
    registry = AdapterRegistry(config.adapters_dir)
    staging = registry.staging_dir(version)
    shutil.copytree(folder, staging, dirs_exist_ok=True)
    published = registry.publish(staging, version=version, parent=parent, round_id=None, details={})
    store.add_adapter_version(published)
    return published


def greedy(backend: LocalBackend, adapter: str | None) -> list[str]:
    requests = [GenerationRequest(p, max_tokens=24, adapter=adapter) for p in PROMPTS]
    return [group[0].text for group in backend.generate(requests)]


@pytest.fixture
def store(config: LoopdConfig) -> Store:
    """The store at the config's own database, which the CLI opens too."""
    opened = Store(config.db_path)
    yield opened
    opened.close()


@pytest.fixture
def two_versions(
    config: LoopdConfig, store: Store, make_adapter: Callable[..., Path]
) -> tuple[AdapterVersion, AdapterVersion]:
    first = publish(config, store, make_adapter(1), 1, None)
    return first, publish(config, store, make_adapter(2), 2, 1)


def test_rollback_restores_the_parent_with_identical_outputs(
    config: LoopdConfig, store: Store, backend: LocalBackend, two_versions
) -> None:
    first, second = two_versions
    deployer = Deployer(
        backend, store, registry=AdapterRegistry(config.adapters_dir), prefix="loopd"
    )
    deployer.deploy(first)
    before = greedy(backend, deployer.live_name())
    deployer.deploy(second)
    assert greedy(backend, deployer.live_name()) != before  # the swap changed what serves

    parent = deployer.rollback(reason="operator")
    assert parent == first and store.live_version() == 1
    assert greedy(backend, deployer.live_name()) == before
    assert "loopd-v0002" not in backend.adapters()  # the rolled-back version is unloaded
    with pytest.raises(DeployRefused, match="rolled back once"):
        deployer.deploy(second)  # never promoted again automatically
    deployer.deploy(second, automatic=False)  # an operator still can
    assert store.live_version() == 2


def test_a_pin_freezes_deployments_and_rollbacks(
    config: LoopdConfig, store: Store, backend: LocalBackend, two_versions
) -> None:
    first, second = two_versions
    deployer = Deployer(
        backend, store, registry=AdapterRegistry(config.adapters_dir), prefix="loopd"
    )
    deployer.pin(first)  # deploys it, then freezes
    assert store.live_version() == 1 and store.pinned_version() == 1
    with pytest.raises(DeployRefused, match=r"pinned to v0001.*loopd adapters unpin"):
        deployer.deploy(second)
    with pytest.raises(DeployRefused, match="pinned"):
        deployer.deploy(second, automatic=False)
    with pytest.raises(DeployRefused, match="rollback refused"):
        deployer.rollback(reason="x")
    assert deployer.unpin() == 1 and store.pinned_version() is None
    deployer.deploy(second)
    assert store.live_version() == 2


def test_a_round_whose_candidate_passes_under_a_pin_is_blocked_and_says_so(
    config: LoopdConfig,
) -> None:
    inputs = resolve_inputs(config)
    backend = LocalBackend(inputs.base_model, threads=1)
    loop = Loop(config, inputs, backend=backend, store=Store(config.db_path))
    loop.deployer.pin(None)  # the operator keeps the bare base model serving
    loop.sample_round()
    report = loop.training_round()
    assert report.decision.promote, report.decision.reason  # the gate would promote it ...
    assert report.status == "blocked"  # ... the pin does not let it go live
    [row] = loop.store.rounds()
    assert row["decision"].startswith("promotion blocked:")
    assert "pinned to the base model" in row["decision"]
    assert loop.store.live_version() is None
    assert loop.deployer.serving_name(report.candidate) not in backend.adapters()
    [decision] = loop.store.decisions()
    assert decision["promote"] and decision["candidate_version"] == report.candidate.version


def cli(config_file: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "loopd", "adapters", *args, "--config", str(config_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_adapters_verbs_work_on_the_database_with_no_daemon(
    store: Store, two_versions, config_file: Path
) -> None:
    promoted = cli(config_file, "promote", "v2")
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "v0002 is live" in promoted.stdout and "no daemon running" in promoted.stdout
    assert store.live_version() == 2

    listed = json.loads(cli(config_file, "list", "--json").stdout)
    assert [(r["version"], r["state"]) for r in listed] == [(2, "live"), (1, "published")]
    table = cli(config_file, "list").stdout
    assert "v0002" in table and "live" in table

    assert cli(config_file, "pin", "2").returncode == 0
    refused = cli(config_file, "rollback")
    assert refused.returncode == 1 and "pinned to v0002" in refused.stdout
    assert cli(config_file, "unpin").returncode == 0
    rolled = cli(config_file, "rollback")
    assert rolled.returncode == 0 and "v0001 is live" in rolled.stdout
    assert store.live_version() == 1

    shown = json.loads(cli(config_file, "show", "2", "--json").stdout)
    kinds = [e["kind"] for e in shown["events"]]
    assert shown["state"] == "rolled back" and {"deployed", "pinned", "unpinned"} <= set(kinds)
    missing = cli(config_file, "show", "9")
    assert missing.returncode == 1 and "no adapter version 9" in missing.stdout
    bad = cli(config_file, "promote", "latest")
    assert bad.returncode == 1 and "give a version" in bad.stdout


def test_the_adapters_verbs_go_through_a_running_daemon(
    daemon_config: LoopdConfig,
    make_adapter: Callable[..., Path],
    config_file: Path,
    admin_headers: dict[str, str],
) -> None:
    cfg = daemon_config
    inputs = resolve_inputs(cfg)
    backend = LocalBackend(inputs.base_model, threads=1)
    loop = Loop(cfg, inputs, backend=backend, store=Store(cfg.db_path))
    publish(cfg, loop.store, make_adapter(1), 1, None)
    publish(cfg, loop.store, make_adapter(2), 2, 1)
    daemon = Daemon(loop)
    daemon.start()
    try:
        promoted = cli(config_file, "promote", "2")
        assert promoted.returncode == 0, promoted.stdout + promoted.stderr
        assert "no daemon running" not in promoted.stdout
        assert "loopd-v0002" in backend.adapters()  # the daemon loaded it into serving
        assert loop.deployer.live_name() == "loopd-v0002"

        assert cli(config_file, "pin", "2").returncode == 0
        refused = cli(config_file, "promote", "1")
        assert refused.returncode == 1 and "pinned to v0002" in refused.stdout
        status = httpx.get(f"http://127.0.0.1:{daemon.port}/status").json()
        assert status["pinned_version"] == 2 and status["live_version"] == 2
        admin = admin_headers
        url = f"http://127.0.0.1:{daemon.port}"
        assert httpx.post(f"{url}/admin/adapters/7/promote", headers=admin).status_code == 404
        assert httpx.post(f"{url}/admin/adapters/oops", headers=admin).status_code == 404

        assert cli(config_file, "unpin").returncode == 0
        rolled = cli(config_file, "rollback")
        assert rolled.returncode == 0 and "v0001 is live" in rolled.stdout
        assert backend.adapters() == ["loopd-v0001"]
    finally:
        daemon.stop()
    assert not (cfg.state_dir / "daemon.json").exists()

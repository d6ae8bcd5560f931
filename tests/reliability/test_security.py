"""The admin API needs its token, serving gets only registry folders, state stays private."""

from __future__ import annotations

import json
import logging
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from loopd.adapters import AdapterCorrupt, AdapterRegistry
from loopd.backends.local import LocalBackend
from loopd.config import DaemonConfig, LoopdConfig
from loopd.daemon import Daemon
from loopd.deploy import Deployer, DeployFailed
from loopd.inputs import resolve_inputs
from loopd.loop import Loop
from loopd.store import Store
from loopd.types import CLEAN, AdapterVersion, Completion, Prompt


def published(registry: AdapterRegistry, folder: Path, version: int) -> AdapterVersion:
    staging = registry.staging_dir(version)
    for file in folder.iterdir():
        (staging / file.name).write_bytes(file.read_bytes())
    return registry.publish(staging, version=version, parent=None, round_id=None, details={})


@pytest.fixture
def running(daemon_config: LoopdConfig, make_adapter: Callable[..., Path]):
    """A daemon with v0001 published (not deployed), and its loop."""
    inputs = resolve_inputs(daemon_config)
    loop = Loop(
        daemon_config,
        inputs,
        backend=LocalBackend(inputs.base_model, threads=1),
        store=Store(daemon_config.db_path),
    )
    loop.store.add_adapter_version(published(loop.registry, make_adapter(1), 1))
    daemon = Daemon(loop)
    daemon.start()
    yield daemon, f"http://127.0.0.1:{daemon.port}"
    daemon.stop()


def test_admin_verbs_need_the_bearer_token_and_change_nothing_without_it(
    running, admin_headers: dict[str, str]
) -> None:
    daemon, url = running
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": ""}):
        response = httpx.post(f"{url}/admin/adapters/1/promote", headers=headers)
        assert response.status_code == 401, headers
        assert "bearer token" in response.json()["error"]
    assert daemon.loop.store.live_version() is None  # nothing happened
    assert daemon.loop.backend.adapters() == []
    assert httpx.post(f"{url}/admin/adapters/1/promote", headers=admin_headers).status_code == 200
    assert daemon.loop.store.live_version() == 1
    assert httpx.get(f"{url}/adapters").status_code == 200  # reading needs no token


def test_with_no_token_configured_the_admin_api_is_off(
    daemon_config: LoopdConfig, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = daemon_config.model_copy(
        update={"daemon": daemon_config.daemon.model_copy(update={"admin_token": None})}
    )
    inputs = resolve_inputs(cfg)
    loop = Loop(
        cfg, inputs, backend=LocalBackend(inputs.base_model, threads=1), store=Store(cfg.db_path)
    )
    daemon = Daemon(loop)
    with caplog.at_level(logging.INFO, logger="loopd"):
        daemon.start()
    try:
        response = httpx.post(f"http://127.0.0.1:{daemon.port}/admin/adapters/rollback")
        assert response.status_code == 403 and "admin API disabled" in response.json()["error"]
        assert any("disabled" in str(getattr(r, "admin", "")) for r in caplog.records)
    finally:
        daemon.stop()


def test_the_token_is_never_logged_nor_shown(running, admin_headers, caplog) -> None:
    daemon, url = running
    secret = daemon.cfg.daemon.admin_token.get_secret_value()
    with caplog.at_level(logging.DEBUG):
        httpx.post(f"{url}/admin/adapters/1/pin", headers=admin_headers)
        status = httpx.get(f"{url}/status").text
    assert secret not in caplog.text and secret not in status
    assert secret not in repr(daemon.cfg) and secret not in daemon.cfg.model_dump_json()


def test_it_listens_on_loopback_unless_told_otherwise(running) -> None:
    daemon, _ = running
    assert DaemonConfig().host == "127.0.0.1"
    assert daemon.http.address[0] == "127.0.0.1"


def test_a_short_token_is_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="admin_token"):
        DaemonConfig(admin_token=SecretStr("short"))


def test_state_is_private(running) -> None:
    daemon, _ = running
    assert stat.S_IMODE(daemon.cfg.state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(daemon.address_file.stat().st_mode) == 0o600


def test_adapter_paths_are_confined_to_the_registry(
    tmp_path: Path, make_adapter: Callable[..., Path], backend: LocalBackend
) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")
    good = published(registry, make_adapter(1), 1)
    registry.verify(good.path)
    outside = tmp_path / "elsewhere" / "v0009"  # a complete, intact copy, outside
    shutil.copytree(good.path, outside)
    (registry.root / "v0002").symlink_to(outside)  # a version folder linking out
    escapes = [
        make_adapter(1),  # a folder outside the registry
        outside,
        registry.root / "v0001" / ".." / ".." / "elsewhere" / "v0009",  # traversal
        registry.root / "v0002",
    ]
    for path in escapes:
        with pytest.raises(AdapterCorrupt, match="not a version folder"):
            registry.verify(path)
    linked = registry.root / "v0003"
    linked.mkdir()
    (linked / "manifest.json").write_text((good.path / "manifest.json").read_text())
    for name in json.loads((good.path / "manifest.json").read_text())["sha256"]:
        (linked / name).symlink_to(good.path / name)
    with pytest.raises(AdapterCorrupt, match="link or outside"):
        registry.verify(linked)

    store = Store(tmp_path / "loopd.db")
    deployer = Deployer(backend, store, registry=registry, prefix="loopd")
    foreign = AdapterVersion(version=7, path=make_adapter(1), parent=None, created_at=0.0)
    with pytest.raises(DeployFailed, match="not a version folder"):
        deployer.deploy(foreign, automatic=False)
    assert backend.adapters() == [] and store.live_version() is None  # never sent to serving


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt_id=st.text(min_size=1, max_size=40),
    text=st.text(max_size=200),
)
def test_hostile_prompt_text_is_stored_as_data(tmp_path: Path, prompt_id: str, text: str) -> None:
    """Quotes, semicolons and SQL in a prompt are values bound as parameters, not SQL."""
    store = Store(tmp_path / "loopd.db")
    hostile = f"{text}'); DROP TABLE samples; --"
    completion = Completion(prompt_id=prompt_id, text=hostile, finish_reason="stop")
    [sample] = store.add_samples([(Prompt(id=prompt_id, text=hostile), completion, CLEAN)])
    [row] = store.db.query(
        "SELECT p.text, s.text AS answer FROM samples s JOIN prompts p ON p.id = s.prompt_id"
        " WHERE s.id = ?",
        [sample.id],
    )
    assert row == {"text": hostile, "answer": hostile}
    store.db.execute("DELETE FROM samples")
    store.close()

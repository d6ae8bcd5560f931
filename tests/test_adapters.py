"""Adapter folders: a version exists only when complete; manifest last, one rename."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopd.adapters import MANIFEST, AdapterRegistry


def test_publish_is_all_or_nothing(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path / "adapters")
    staging = registry.staging_dir(1)
    (staging / "adapter_model.safetensors").write_bytes(b"weights")
    assert registry.versions_on_disk() == []  # staging is invisible
    version = registry.publish(staging, version=1, parent=None, round_id=4, details={"steps": 3})
    assert version.path.name == "v0001" and not staging.exists()
    assert json.loads((version.path / MANIFEST).read_text())["round_id"] == 4
    assert registry.versions_on_disk() == [1]
    with pytest.raises(FileExistsError):
        registry.publish(registry.staging_dir(1), version=1, parent=None, round_id=5, details={})


def test_leftovers_of_an_interrupted_round_are_cleaned(tmp_path: Path) -> None:
    registry = AdapterRegistry(tmp_path)
    registry.staging_dir(2)
    incomplete = tmp_path / "v0003"
    incomplete.mkdir()  # no manifest: never published, never trusted
    assert registry.clean_staging() == 1
    assert registry.versions_on_disk() == []

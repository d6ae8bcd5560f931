"""Versioned adapter folders, published atomically.

A training round writes into a staging folder beside the registry. Publishing writes
``manifest.json`` last, then renames the staging folder to ``vNNNN`` in one step, so a
version folder exists only when it is complete: serving never sees half an adapter, and
a crash mid-write leaves only a staging folder that ``clean_staging`` removes on start.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from loopd.types import AdapterVersion

MANIFEST = "manifest.json"
STAGING_PREFIX = ".staging-"
BASE = 0  # the bare base model, where a version number is needed (a pin); versions start at 1


def label(version: int | None) -> str:
    """``v0003``, or "the base model" for None or ``BASE``."""
    return "the base model" if not version else f"v{version:04d}"


class AdapterRegistry:
    """The adapters folder under ``state_dir``: ``v0001/``, ``v0002/``, … plus staging."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def staging_dir(self, version: int) -> Path:
        path = self.root / f"{STAGING_PREFIX}v{version:04d}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def publish(
        self,
        staging: Path,
        *,
        version: int,
        parent: int | None,
        round_id: int | None,
        details: dict[str, Any],
    ) -> AdapterVersion:
        """Seal ``staging`` as version ``version``: manifest last, then one rename."""
        created = AdapterVersion(
            version=version,
            path=self.root / f"v{version:04d}",
            parent=parent,
            created_at=time.time(),
            round_id=round_id,
        )
        if created.path.exists():
            raise FileExistsError(f"adapter version {version} already exists at {created.path}")
        manifest = {"version": version, "parent": parent, "round_id": round_id, **details}
        _write_durably(staging / MANIFEST, json.dumps(manifest, indent=2, default=str))
        staging.rename(created.path)
        return created

    def is_complete(self, path: Path) -> bool:
        return (path / MANIFEST).is_file()

    def versions_on_disk(self) -> list[int]:
        return sorted(
            int(p.name[1:]) for p in self.root.glob("v[0-9][0-9][0-9][0-9]") if self.is_complete(p)
        )

    def clean_staging(self) -> int:
        """Remove leftovers of interrupted rounds; returns how many were removed."""
        leftovers = list(self.root.glob(f"{STAGING_PREFIX}*"))
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
        return len(leftovers)

    def remove(self, version: int) -> None:
        shutil.rmtree(self.root / f"v{version:04d}", ignore_errors=True)


def _write_durably(path: Path, text: str) -> None:
    with path.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())

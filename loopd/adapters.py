"""Versioned adapter folders, published atomically and checked before every load.

A training round writes into a staging folder beside the registry. Publishing fsyncs
every weight file, writes ``manifest.json`` last (with the sha256 of every file), fsyncs
the folder, renames it to ``vNNNN`` in one step and fsyncs the registry: a version
folder exists only when it is complete and durable, so serving never sees half an
adapter and a crash (or power loss) mid-write leaves only a staging folder that
``clean_staging`` removes on start.

``verify`` is the one check every load goes through: the folder must be inside the
registry (no ``..``, no symlink out of it: vLLM is told this path and reads it as
itself), and every file must still match its checksum. A corrupted or tampered version
is refused with ``AdapterCorrupt`` and never reaches serving.
"""

from __future__ import annotations

import hashlib
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
_CHUNK = 1 << 20


class AdapterCorrupt(RuntimeError):
    """A version folder that is incomplete, escapes the registry, or fails its checksums."""


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
        """Seal ``staging`` as version ``version``: files synced, manifest last, one rename."""
        created = AdapterVersion(
            version=version,
            path=self.root / f"v{version:04d}",
            parent=parent,
            created_at=time.time(),
            round_id=round_id,
        )
        if created.path.exists():
            raise FileExistsError(f"adapter version {version} already exists at {created.path}")
        files = {name: _sync_and_hash(staging / name) for name in _files(staging)}
        manifest = {
            "version": version,
            "parent": parent,
            "round_id": round_id,
            "sha256": files,
            **details,
        }
        _write_durably(staging / MANIFEST, json.dumps(manifest, indent=2, default=str))
        _sync_dir(staging)
        staging.rename(created.path)
        _sync_dir(self.root)
        return created

    def verify(self, path: Path) -> None:
        """Raise ``AdapterCorrupt`` unless ``path`` is a complete, intact version here."""
        resolved = path.resolve()
        if resolved.parent != self.root.resolve() or not resolved.name.startswith("v"):
            raise AdapterCorrupt(f"{path} is not a version folder of the registry {self.root}")
        verify_folder(resolved)

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


def verify_folder(path: Path) -> None:
    """Every file the manifest lists is there, inside ``path``, with its sha256."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError) as error:
        raise AdapterCorrupt(f"{path}: no readable {MANIFEST} ({error})") from None
    expected = manifest.get("sha256")
    if not isinstance(expected, dict) or not expected:
        raise AdapterCorrupt(f"{path}: {MANIFEST} lists no checksums; republish the version")
    for name, digest in sorted(expected.items()):
        file = path / name
        if file.is_symlink() or file.resolve().parent != path.resolve():
            raise AdapterCorrupt(f"{path}: {name} is a link or outside the version folder")
        if not file.is_file() or _sha256(file) != digest:
            raise AdapterCorrupt(f"{path}: {name} does not match its checksum; never deployed")


def _files(folder: Path) -> list[str]:
    """The version's files (flat, as PEFT writes them); links and folders are refused."""
    names = []
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            raise AdapterCorrupt(f"{entry}: adapters hold plain files only")
        if entry.name != MANIFEST:
            names.append(entry.name)
    return names


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _sync_and_hash(path: Path) -> str:
    with path.open("rb") as data:
        os.fsync(data.fileno())
    return _sha256(path)


def _sync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` survive a power loss."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_durably(path: Path, text: str) -> None:
    with path.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())

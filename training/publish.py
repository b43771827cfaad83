"""Publishing what workers read: bundles and registry versions, every write a rename.

A bundle's ``bundle.json`` is written after its model file, and a registry
version is assembled under ``versions/.incoming-*`` then renamed into place, so a
reader (:mod:`worker.contract`) sees the old state or the new, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.contract.bundle import METADATA_FILE, MODEL_FILE, BundleMetadata
from worker.contract.exceptions import BundleError
from worker.contract.registry import (
    CURRENT_FILE,
    HISTORY_FILE,
    STATUS_FILE,
    VERSIONS_DIR,
    Registry,
)

__all__ = ["WritableRegistry", "atomic_write", "write_bundle"]


def write_bundle(directory: Path, model_bytes: bytes, metadata: BundleMetadata) -> BundleMetadata:
    """Write a bundle; ``metadata.sha256`` is replaced by the checksum of ``model_bytes``."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(model_bytes).hexdigest()
    final = replace(metadata, sha256=digest)
    atomic_write(directory / MODEL_FILE, model_bytes)
    atomic_write(directory / METADATA_FILE, final.to_json().encode("utf-8"))
    return final


class WritableRegistry(Registry):
    """A registry ``anomaly-train`` registers, promotes and removes versions in."""

    @classmethod
    def create(cls, root: Path) -> WritableRegistry:
        (root / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
        return cls(root)

    def add(self, version: str, write: Callable[[Path], None]) -> Path:
        """Build a version with ``write(directory)`` and move it into place atomically."""
        final = self.path_of(version)
        if final.exists():
            raise BundleError(f"version {version} is already registered")
        staging = self.root / VERSIONS_DIR / f".incoming-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            write(staging)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(final.parent)
        return final

    def set_status(self, version: str, state: str, **details: Any) -> None:
        record = {"state": state, "at": _now(), **details}
        atomic_write(self.path_of(version) / STATUS_FILE, _json_bytes(record))

    def set_current(self, version: str, reason: str) -> None:
        """Point CURRENT at ``version`` (which must exist) and append to the history."""
        if not self.path_of(version).is_dir():
            raise BundleError(f"version {version} is not registered")
        history = [*self.history(), {"version": version, "at": _now(), "reason": reason}]
        atomic_write(self.root / HISTORY_FILE, _json_bytes(history))
        atomic_write(self.root / CURRENT_FILE, (version + "\n").encode())

    def remove(self, version: str) -> None:
        if version == self.current():
            raise BundleError(f"version {version} is current; promote another one first")
        path = self.path_of(version)
        trash = path.parent / f".removing-{uuid.uuid4().hex}"
        os.rename(path, trash)  # vanish atomically, then delete at leisure
        shutil.rmtree(trash)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` so readers see the old content or the new, never a part (rename + fsync)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")

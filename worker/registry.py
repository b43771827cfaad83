"""The model registry: many bundles, one of them current. Owned by the worker, written by training.

Layout (a local path or a mounted volume)::

    registry/
      CURRENT                  the current version's name (one line)
      history.json             promotions, oldest first: [{"version", "at", "reason"}]
      versions/<version>/      a bundle (model.pt, bundle.json) plus status.json, report.*

A version directory is assembled under ``versions/.incoming-*`` and renamed into
place in one step; ``CURRENT`` and ``history.json`` are replaced by rename. A
reader therefore sees either the old or the new state, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.bundle import atomic_write, fsync_dir
from worker.exceptions import BundleError

__all__ = [
    "CURRENT_FILE",
    "VERSIONS_DIR",
    "Registry",
    "resolve_bundle",
]

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "history.json"
STATUS_FILE = "status.json"
VERSIONS_DIR = "versions"


class Registry:
    """A registry directory; every write is a rename, so concurrent readers stay consistent."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def is_registry(path: Path) -> bool:
        return (path / VERSIONS_DIR).is_dir()

    @classmethod
    def create(cls, root: Path) -> Registry:
        (root / VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
        return cls(root)

    # --- reading -------------------------------------------------------------------
    def current(self) -> str | None:
        try:
            name = (self.root / CURRENT_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return name or None

    def path_of(self, version: str) -> Path:
        if not version or "/" in version or version.startswith("."):
            raise BundleError(f"not a version name: {version!r}")
        return self.root / VERSIONS_DIR / version

    def versions(self) -> list[str]:
        """Every registered version, oldest first (names start with their creation time)."""
        base = self.root / VERSIONS_DIR
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    def history(self) -> list[dict[str, Any]]:
        try:
            return list(json.loads((self.root / HISTORY_FILE).read_text(encoding="utf-8")))
        except FileNotFoundError:
            return []

    def status(self, version: str) -> dict[str, Any]:
        try:
            return dict(
                json.loads((self.path_of(version) / STATUS_FILE).read_text(encoding="utf-8"))
            )
        except FileNotFoundError:
            return {"state": "candidate"}

    # --- writing --------------------------------------------------------------------
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
        fsync_dir(final.parent)
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


def resolve_bundle(path: Path) -> tuple[Path, str | None]:
    """The bundle directory behind ``path``: itself, or a registry's current version.

    Returns the directory and the registry version name (None for a plain bundle).
    """
    if not Registry.is_registry(path):
        return path, None
    registry = Registry(path)
    version = registry.current()
    if version is None:
        raise BundleError(
            f"registry {path} has no current model; promote one with "
            "'anomaly-train models promote VERSION --registry ...'"
        )
    return registry.path_of(version), version


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode("utf-8")

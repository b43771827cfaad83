"""The model registry, read side: many bundles, one of them current.

Layout (a local path or a mounted volume)::

    registry/
      CURRENT                  the current version's name (one line)
      history.json             promotions, oldest first: [{"version", "at", "reason"}]
      versions/<version>/      a bundle (model.pt, bundle.json) plus status.json, report.*

``anomaly-train`` writes it (:mod:`training.publish`): a version directory is
assembled aside and renamed into place in one step; ``CURRENT`` and
``history.json`` are replaced by rename. A reader therefore sees either the old
or the new state, never half of one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from worker.contract.exceptions import BundleError

__all__ = [
    "CURRENT_FILE",
    "HISTORY_FILE",
    "STATUS_FILE",
    "VERSIONS_DIR",
    "Registry",
    "resolve_bundle",
]

CURRENT_FILE = "CURRENT"
HISTORY_FILE = "history.json"
STATUS_FILE = "status.json"
VERSIONS_DIR = "versions"


class Registry:
    """A registry directory as its readers see it (the worker, ``anomaly-train models list``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @staticmethod
    def is_registry(path: Path) -> bool:
        return (path / VERSIONS_DIR).is_dir()

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

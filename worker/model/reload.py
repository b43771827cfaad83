"""Hot reload: watch a registry's CURRENT pointer and prepare the new model off the hot path.

A background thread notices a new current version, loads and verifies it
(checksum, shapes, the same features in the same order as the model being
served) and parks it. The pipeline takes it between two batches, so no record
is scored by a half-loaded model and none is skipped. A version that fails
verification (or cannot be read at all) is refused, logged and counted once, the
old model keeps serving, and the version is tried again at the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from worker.contract.bundle import METADATA_FILE, read_metadata
from worker.contract.exceptions import BundleError
from worker.contract.records import feature_change
from worker.contract.registry import Registry
from worker.contract.scoring import Scorer

__all__ = ["ModelWatcher"]

logger = logging.getLogger(__name__)


class ModelWatcher:
    def __init__(
        self,
        registry_path: Path,
        serving: Scorer,
        serving_version: str | None,
        device: str,
        poll_seconds: float,
        on_result: Callable[[str, str], None] = lambda result, version: None,
    ) -> None:
        self.registry = Registry(registry_path)
        self.feature_names = serving.metadata.feature_names
        self.device = device
        self.poll_seconds = poll_seconds
        self.on_result = on_result
        self._seen = serving_version
        self._parked: Scorer | None = None
        self._refused: set[str] = set()  # versions refused (and logged) once already
        #: Versions refused for their features, and their bundle.json's (mtime, size) then.
        self._other_features: dict[str, tuple[int, int]] = {}
        self._registry_unreadable = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="model-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def take(self) -> Scorer | None:
        """The newly loaded model, once; None when there is nothing new."""
        with self._lock:
            parked, self._parked = self._parked, None
        return parked

    def check(self) -> None:
        """Look at CURRENT once; load and park a new version (the thread's step; tests call it).

        Never raises: whatever goes wrong (a version pruned mid-load, a permission
        error, a truncated ``bundle.json``, a broken module) refuses that version,
        counted and logged once; it is tried again at the next poll, so a version
        still being copied in is picked up once it is complete. A version whose features
        differ from the served model's is refused from its ``bundle.json`` alone and not
        read again until that file changes.
        """
        try:
            version = self.registry.current()
        except Exception as exc:
            if not self._registry_unreadable:
                logger.warning("cannot read the registry's current version: %s", exc)
            self._registry_unreadable = True
            return
        self._registry_unreadable = False
        if version is None or version == self._seen:
            return
        try:
            directory = self.registry.path_of(version)
            stamp = _stamp(directory / METADATA_FILE)
            if self._other_features.get(version) == stamp:
                return  # refused for its features, and unchanged since
            change = feature_change(self.feature_names, read_metadata(directory).feature_names)
            if change:
                self._other_features[version] = stamp
                raise BundleError(
                    f"its features differ from the served model's ({change}); a worker serves "
                    "one feature schema: promote a model of these features, or restart the "
                    "workers with the new one once the producers send its features"
                )
            scorer = Scorer.load(directory, self.device)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, BundleError) else f"{type(exc).__name__}: {exc}"
            if version not in self._refused:
                self._refused.add(version)
                again = "" if version in self._other_features else " (tried again at each poll)"
                logger.error(
                    "model %s refused, the current model keeps serving%s: %s",
                    version,
                    again,
                    reason,
                )
                self.on_result("refused", version)
            return
        self._seen = version
        self._refused.discard(version)
        with self._lock:
            self._parked = scorer
        logger.info("model %s loaded and verified; switching at the next batch", version)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()


def _stamp(path: Path) -> tuple[int, int]:
    """A file's (modification time, size): changes when the file is written again."""
    stat = path.stat()
    return stat.st_mtime_ns, stat.st_size

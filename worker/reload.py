"""Hot reload: watch a registry's CURRENT pointer and prepare the new model off the hot path.

A background thread notices a new current version, loads and verifies it
(checksum, shapes, the same features in the same order as the model being
served) and parks it. The pipeline takes it between two batches, so no record
is scored by a half-loaded model and none is skipped. A version that fails
verification is refused once, logged, counted, and the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from worker.exceptions import BundleError
from worker.registry import Registry
from worker.scoring import Scorer

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
        """Look at CURRENT once; load and park a new version (the thread's step; tests call it)."""
        try:
            version = self.registry.current()
        except OSError as exc:
            logger.warning("cannot read the registry's current version: %s", exc)
            return
        if version is None or version == self._seen:
            return
        self._seen = version
        try:
            scorer = Scorer.load(self.registry.path_of(version), self.device)
            if scorer.metadata.feature_names != self.feature_names:
                raise BundleError(
                    f"features {list(scorer.metadata.feature_names)[:5]} differ from the served "
                    f"model's {list(self.feature_names)[:5]}; restart the worker to change features"
                )
        except BundleError as exc:
            logger.error("model %s refused, the current model keeps serving: %s", version, exc)
            self.on_result("refused", version)
            return
        with self._lock:
            self._parked = scorer
        logger.info("model %s loaded and verified; switching at the next batch", version)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()

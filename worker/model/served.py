"""The model being served: scorer, threshold and drift monitor, swapped together between batches.

With a registry, :class:`~worker.model.reload.ModelWatcher` prepares a newly promoted
model off the hot path; :meth:`ServedModel.refresh` takes it between two batches, so no
record is scored by a half-loaded model and none is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from worker.contract.drift import DriftMonitor
from worker.contract.recent_threshold import DEFAULT_BLOCK_RECORDS, Judgement, RecentThreshold
from worker.contract.records import FEATURES_NAMED, DecodedBatch, FeatureSchema, Record
from worker.contract.scoring import Scored, Scorer
from worker.core.threshold import Threshold
from worker.model.compatibility import FeatureFit
from worker.model.reload import ModelWatcher
from worker.observe.health import HealthState
from worker.observe.metrics import WorkerMetrics

__all__ = ["DriftWindow", "RecentPast", "ServedModel"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecentPast:
    """ANOMALY_THRESHOLD_MODE=entity_recent: each entity judged against its recent scores."""

    window: int
    warmup: int
    max_entities: int


@dataclass(frozen=True)
class DriftWindow:
    """Drift is measured over the newest ``records`` records of at most ``seconds`` seconds."""

    records: int
    seconds: float


class ServedModel:
    """What scores the next batch (``drift``: None to measure no drift)."""

    def __init__(
        self,
        scorer: Scorer,
        threshold: Threshold,
        metrics: WorkerMetrics,
        health: HealthState,
        drift: DriftWindow | None,
        watcher: ModelWatcher | None = None,
        recent_past: RecentPast | None = None,
    ) -> None:
        self.metrics, self.drift_window, self.watcher = metrics, drift, watcher
        self.threshold = threshold
        self.recent_past = recent_past
        self.recent: RecentThreshold | None = None
        self.fit = FeatureFit(health)
        self._serve(scorer)

    def _serve(self, scorer: Scorer) -> None:
        self.scorer = scorer
        self.schema = FeatureSchema(scorer.metadata.feature_names)
        self.drift = self._drift_monitor(scorer)  # a new reference: a fresh window
        self.fit.reset()  # judged anew
        if self.recent_past is not None:  # a new model's scores: every entity warms up again
            past = self.recent_past
            self.recent = RecentThreshold(
                self.threshold.value,
                scorer.metadata.calibration.expected_alert_rate,
                past.window,
                DEFAULT_BLOCK_RECORDS,
                past.warmup,
                past.max_entities,
            )
        meta = scorer.metadata
        self.metrics.set_model(
            meta.version, self.threshold.value, meta.calibration.expected_alert_rate
        )
        self.metrics.entity_baselines.set(len(meta.baselines))
        names = self.schema.names
        logger.info(
            "serving model %s: %d features (%s%s), threshold %.6g",
            meta.version,
            len(names),
            ", ".join(names[:FEATURES_NAMED]),
            " ..." if len(names) > FEATURES_NAMED else "",
            self.threshold.value,
        )

    def score(self, decoded: DecodedBatch) -> Scored:
        """Score a batch, each row by its entity's baseline when the model has them."""
        if self.scorer.router is None:
            return self.scorer.score(decoded.features)
        scored = self.scorer.score(decoded.features, [r.entity for r in decoded.records])
        assert scored.baseline is not None
        own = int(np.count_nonzero(scored.baseline >= 0))
        self.metrics.records_by_baseline.labels(baseline="entity").inc(own)
        self.metrics.records_by_baseline.labels(baseline="generic").inc(len(scored.baseline) - own)
        return scored

    def decide(self, scores: np.ndarray, records: Sequence[Record]) -> Judgement:
        """Which rows alert, and what each was judged against."""
        if self.recent is None:
            return self.threshold.judge(scores)
        return self.recent.judge(scores, [r.entity for r in records])

    def watch_fit(self, decoded: DecodedBatch) -> None:
        """What a batch decoded to: does this model still fit the traffic?"""
        self.fit.batch(self.scorer.metadata.version, self.schema.names, decoded)
        if decoded.ignored_features:
            first_seen = self.metrics.features_ignored(decoded.ignored_features)
            if first_seen:
                logger.warning(
                    "records carry named features model %s does not have: %s; they are "
                    "ignored and the records scored (ANOMALY_UNKNOWN_FEATURES=refuse "
                    "dead-letters them); retrain to use them",
                    self.scorer.metadata.version,
                    first_seen,
                )

    def refresh(self) -> None:
        """Serve the newly promoted model, if the watcher has one ready."""
        if self.watcher is None:
            return
        scorer = self.watcher.take()
        if scorer is None:
            return
        previous = self.scorer.metadata.version
        if self.threshold.source == "bundle":
            self.threshold = Threshold(scorer.metadata.threshold)
        self._serve(scorer)
        self.metrics.model_reloads.labels(result="loaded").inc()
        logger.info("now serving model %s (was %s)", scorer.metadata.version, previous)

    def _drift_monitor(self, scorer: Scorer) -> DriftMonitor | None:
        reference = scorer.metadata.drift_reference
        if self.drift_window is None:
            return None
        if reference is None:
            logger.info(
                "model %s carries no drift reference (written by an older anomaly-train): "
                "drift is not measured",
                scorer.metadata.version,
            )
            return None
        return DriftMonitor.from_reference(
            reference, self.drift_window.records, self.drift_window.seconds
        )

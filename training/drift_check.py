"""Should retraining run? Drift of recent traffic from the current model's training traffic.

``anomaly-train retrain --if-drift`` measures the same statistic the worker exports
(:mod:`worker.contract.drift`: population stability index per feature and of the score),
either on the Kafka window it reads anyway, against the current bundle's reference, or
from running workers' ``/metrics`` (``--drift-from``), and retrains only when it passes a
threshold.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from training.exceptions import TrainingError
from worker.contract.bundle import DriftReference
from worker.contract.drift import DriftMonitor

__all__ = ["Drift", "drift_from_metrics", "drift_of_window"]


@dataclass(frozen=True)
class Drift:
    """The largest feature drift, the score drift, and where they were measured."""

    source: str
    feature: str | None
    feature_psi: float
    score_psi: float
    records: int

    @property
    def largest(self) -> float:
        return float(np.nanmax([self.feature_psi, self.score_psi]))

    def exceeds(self, threshold: float) -> bool:
        return self.largest > threshold

    def describe(self) -> str:
        return (
            f"feature drift {self.feature_psi:.3f} ({self.feature}), score drift "
            f"{self.score_psi:.3f}, over {self.records} records of {self.source}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def drift_of_window(
    reference: DriftReference,
    names: Sequence[str],
    features: np.ndarray,
    scores: np.ndarray,
    source: str = "the Kafka window",
) -> Drift:
    """Drift of ``features`` (and the current model's ``scores`` of them) from ``reference``."""
    if len(features) == 0:
        raise TrainingError("no decodable records to measure drift on")
    monitor = DriftMonitor.from_reference(reference, len(features), float("inf"))
    monitor.observe(np.asarray(features, dtype=np.float32), np.asarray(scores))
    snapshot = monitor.snapshot()
    worst = int(np.nanargmax(snapshot.feature_psi))
    return Drift(
        source,
        names[worst],
        float(snapshot.feature_psi[worst]),
        snapshot.score_psi,
        snapshot.records,
    )


def drift_from_metrics(urls: Sequence[str], timeout_seconds: float = 10.0) -> Drift:
    """The largest drift that running workers export (their ``/metrics`` URLs)."""
    feature, feature_psi, score_psi, records = None, float("nan"), float("nan"), 0
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
                text = response.read().decode()
        except (urllib.error.URLError, OSError) as exc:
            raise TrainingError(f"cannot read drift from {url}: {exc}") from exc
        found = False
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "anomaly_feature_drift":
                    found = True
                    if np.isnan(feature_psi) or sample.value > feature_psi:
                        feature, feature_psi = sample.labels.get("feature"), sample.value
                elif sample.name == "anomaly_score_drift":
                    if np.isnan(score_psi) or sample.value > score_psi:
                        score_psi = sample.value
                elif sample.name == "anomaly_drift_window_records":
                    records += int(sample.value)
        if not found:
            raise TrainingError(
                f"{url} exports no anomaly_feature_drift (not a worker's /metrics, ANOMALY_DRIFT "
                "off, a model without a drift reference, or no records yet)"
            )
    return Drift(", ".join(urls), feature, feature_psi, score_psi, records)

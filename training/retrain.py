"""Retraining on Kafka traffic: read a window, keep its normal rows, fit, gate, promote.

The use cases ``anomaly-train retrain`` (once, for a CronJob) and ``schedule`` (in a loop)
run, taking their configuration as values: the Kafka slice of the workers' settings
(:class:`~worker.kafka.settings.KafkaSettings`), the window, the fit, the gate and the
registry's retention.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.config import FitConfig
from training.data import Table
from training.drift_check import Drift, drift_from_metrics, drift_of_window
from training.exceptions import TrainingError
from training.kafka_window import (
    NormalTraffic,
    WindowConfig,
    alerted_ids,
    infer_feature_names,
    normal_traffic,
    read_window,
)
from training.promotion import GateConfig, GateResult, promote, register, retain
from training.publish import WritableRegistry
from worker.contract.exceptions import BundleError
from worker.contract.registry import Registry
from worker.contract.scoring import Scorer
from worker.kafka.settings import KafkaSettings

__all__ = [
    "KAFKA_TRIM_FRACTION",
    "RetrainConfig",
    "gate_line",
    "kafka_traffic",
    "retrain_once",
    "schedule",
]

logger = logging.getLogger(__name__)

#: The robust pass's default for traffic read from Kafka (it may hold unlabelled anomalies).
KAFKA_TRIM_FRACTION = 0.01
#: The newest share of the window gates the candidate; the rest trains it.
GATE_SHARE = 0.2


@dataclass(frozen=True)
class RetrainConfig:
    """Where candidates go, what is kept, and whether only drift triggers a retraining."""

    registry: Path
    keep: int = 10
    """After each cycle keep the newest K versions (plus current and its rollback target)
    and only the newest rejected candidate."""
    if_drift: bool = False
    """Retrain only when recent traffic drifted from the current model's training traffic."""
    drift_threshold: float = 0.25
    """The drift that triggers retraining (0.25: 'significant' in PSI's bands)."""
    drift_from: tuple[str, ...] = ()
    """Read the drift from running workers' /metrics instead of measuring it on the window."""


def gate_line(version: str, result: GateResult) -> str:
    """The verdict as ``anomaly-train`` prints it."""
    verdict = "promoted" if result.accepted else "rejected"
    return f"{version}: {verdict}" + (f" ({'; '.join(result.reasons)})" if result.reasons else "")


def kafka_traffic(
    kafka: KafkaSettings, window: WindowConfig, registry: Registry | None
) -> tuple[NormalTraffic, Scorer | None]:
    """The window's normal rows (the current model, if any, filters out what it alerts on)."""
    connection = kafka.connection()
    current = None
    if registry is not None and registry.current() is not None:
        current = Scorer.load(registry.path_of(registry.current() or ""), "cpu")
    timeout = window.read_timeout_seconds
    records = read_window(connection, kafka.input_topic, window.last, window.since, timeout)
    if not records:
        raise TrainingError(f"the window of {kafka.input_topic!r} is empty")
    alerts = []
    if window.read_alert_topic:
        first_ts = min(r.timestamp for r in records) / 1000.0
        alerts = read_window(
            connection, kafka.alert_topic, window.alert_scan_last, first_ts, timeout
        )
    names = current.metadata.feature_names if current else infer_feature_names(records)
    return normal_traffic(records, names, alerted_ids(alerts), current), current


def retrain_once(
    kafka: KafkaSettings,
    window: WindowConfig,
    fit: FitConfig,
    gate: GateConfig,
    retrain: RetrainConfig,
    say: Callable[[str], None] = print,
) -> bool:
    """Read a window, keep normal rows, register a candidate, gate it on the newest 20%.

    With ``if_drift``, only when the drift of recent traffic from the current model's
    training traffic passes ``drift_threshold`` (True, nothing done, when it does not).
    Returns whether the candidate was promoted.
    """
    fit.validate()
    registry = WritableRegistry.create(retrain.registry)
    traffic, current = kafka_traffic(kafka, window, registry)
    trigger: dict[str, Any] | None = None
    if retrain.if_drift:
        drift = _measure_drift(retrain, traffic, current)
        threshold = retrain.drift_threshold
        if drift is None:
            trigger = {"drift": None, "reason": "no current model with a drift reference"}
            logger.info("no current model with a drift reference to compare with: retraining")
        elif not drift.exceeds(threshold):
            logger.info("no drift above %.2f (%s): not retraining", threshold, drift.describe())
            say(f"not retrained: {drift.describe()}, threshold {threshold}")
            return True
        else:
            trigger = {"drift": drift.to_dict(), "threshold": threshold}
            logger.info("drift above %.2f (%s): retraining", threshold, drift.describe())
    X, order = traffic.table.X, np.argsort(traffic.timestamps, kind="stable")
    cut = int(len(order) * (1 - GATE_SHARE))
    train_rows, sample_rows = np.sort(order[:cut]), np.sort(order[cut:])
    entities = traffic.table.entities
    table = Table(
        X[train_rows],
        traffic.table.feature_names,
        entities=None if entities is None else [entities[i] for i in train_rows.tolist()],
    )
    version = register(registry, table, fit, traffic.excluded, trigger)
    sample_entities = None if entities is None else [entities[i] for i in sample_rows.tolist()]
    result = promote(registry, version, X[sample_rows], gate, sample_entities=sample_entities)
    say(gate_line(version, result))
    removed = retain(registry, retrain.keep)
    if removed:
        logger.info("retention: removed %s", ", ".join(removed))
    return result.accepted


def schedule(
    period_seconds: float,
    every: str,
    kafka: KafkaSettings,
    window: WindowConfig,
    fit: FitConfig,
    gate: GateConfig,
    retrain: RetrainConfig,
    stop: threading.Event,
) -> None:
    """Retrain every ``period_seconds`` until ``stop`` is set; a failed cycle is retried next
    period."""
    logger.info("retraining every %s into %s", every, retrain.registry)
    while not stop.is_set():
        try:
            retrain_once(kafka, window, fit, gate, retrain)
        except (TrainingError, BundleError, OSError) as exc:
            logger.error("retraining failed, will try again next period: %s", exc)
        stop.wait(period_seconds)


def _measure_drift(
    retrain: RetrainConfig, traffic: NormalTraffic, current: Scorer | None
) -> Drift | None:
    """From the workers' /metrics (``drift_from``), else on the window read."""
    if retrain.drift_from:
        return drift_from_metrics(retrain.drift_from)
    if current is None or current.metadata.drift_reference is None:
        return None
    return drift_of_window(
        current.metadata.drift_reference,
        current.metadata.feature_names,
        traffic.window,
        traffic.window_scores,
    )

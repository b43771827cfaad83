"""Prometheus metrics of the worker, on an injected registry (tests read them back)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.drift import DriftMonitor

__all__ = ["ArrayHistogram", "DriftCollector", "WorkerMetrics"]

#: The label value that carries the largest value of the features without a series of their own.
OTHER_FEATURES = "_others"
#: Drift is exported once the window holds this many records (or the whole window, if smaller):
#: PSI of n records against the same traffic is about (bins - 1) / n, 0.09 for 100 records.
DRIFT_MIN_RECORDS = 1_000

BATCH_SIZE_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000)
INFERENCE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    1.0,
)
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
SCORE_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.5, 2.0, 5.0, 10.0, 100.0)


class WorkerMetrics:
    """Every metric the worker exports, named ``anomaly_<thing>_<unit>``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.records_consumed = Counter(
            "anomaly_records_consumed",
            "Messages read from the input topic, valid or not.",
            registry=r,
        )
        self.records_invalid = Counter(
            "anomaly_records_invalid",
            "Messages sent to the dead-letter topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.records_skipped = Counter(
            "anomaly_records_skipped",
            "Offsets skipped because the Kafka client could not decode their batch, by reason.",
            ["reason"],
            registry=r,
        )
        self.records_scored = Counter(
            "anomaly_records_scored", "Records scored by the model.", registry=r
        )
        self.alerts = Counter("anomaly_alerts", "Alerts produced.", registry=r)
        self.commits = Counter("anomaly_offset_commits", "Successful offset commits.", registry=r)
        self.transactions = Counter(
            "anomaly_transactions",
            "exactly_once: transactions ended, by result (committed, aborted).",
            ["result"],
            registry=r,
        )
        self.batch_size = Histogram(
            "anomaly_batch_size", "Records per micro-batch.", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.inference_duration = Histogram(
            "anomaly_inference_duration_seconds",
            "Model time per micro-batch.",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            "anomaly_batch_duration_seconds",
            "Decode + score + produce time per micro-batch.",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            "anomaly_end_to_end_latency_seconds",
            "Event time of a record to its alert being readable: acknowledged by the broker "
            "(at_least_once), committed with its transaction (exactly_once).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.score_ratio = ArrayHistogram(
            "anomaly_score_ratio",
            "Score divided by the threshold (above 1 alerts), per scored record.",
            buckets=SCORE_RATIO_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "anomaly_consumer_lag",
            "Records behind the partition's high-water mark (from fetch responses).",
            ["partition"],
            registry=r,
        )
        self.last_processed = Gauge(
            "anomaly_last_processed_timestamp_seconds",
            "Unix time the last micro-batch finished processing.",
            registry=r,
        )
        self.model_info = Gauge(
            "anomaly_model_info", "The model being served (value 1).", ["version"], registry=r
        )
        self.model_reloads = Counter(
            "anomaly_model_reloads",
            "Models picked up from the registry while running, by result (loaded, refused).",
            ["result"],
            registry=r,
        )
        self.model_loaded = Gauge(
            "anomaly_model_loaded_timestamp_seconds",
            "Unix time the served model was loaded.",
            registry=r,
        )
        self.model_expected_alert_rate = Gauge(
            "anomaly_model_expected_alert_rate",
            "Share of normal records the served model is calibrated to alert on.",
            registry=r,
        )
        self.model_threshold = Gauge(
            "anomaly_model_threshold", "Threshold the served model alerts above.", registry=r
        )
        self.ready = Gauge(
            "anomaly_ready", "1 when connected to the broker and serving, else 0.", registry=r
        )

    def track_drift(
        self,
        source: Callable[[], tuple[DriftMonitor | None, Sequence[str]]],
        max_feature_labels: int,
    ) -> None:
        """Export the drift of ``source()``'s monitor (re-read at each scrape: it changes
        with the model)."""
        DriftCollector(source, max_feature_labels, self.registry)

    def set_model(self, version: str, threshold: float, expected_alert_rate: float) -> None:
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)
        self.model_threshold.set(threshold)
        self.model_expected_alert_rate.set(expected_alert_rate)
        self.model_loaded.set_to_current_time()


class ArrayHistogram(Collector):
    """A histogram fed a whole numpy array at a time (one call per batch, not per record)."""

    def __init__(
        self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = np.asarray(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)  # last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64)
        values = values[~np.isnan(values)]
        counts = np.bincount(
            np.searchsorted(self.bounds, values, side="left"), minlength=len(self._counts)
        )
        with self._lock:
            self._counts += counts
            self._sum += float(values.sum())

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self._lock:
            cumulative = np.cumsum(self._counts)
            total = self._sum
        buckets = [
            (repr(float(b)), float(c)) for b, c in zip(self.bounds, cumulative[:-1], strict=True)
        ]
        buckets.append(("+Inf", float(cumulative[-1])))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


class DriftCollector(Collector):
    """Drift of the live window against the model's reference, computed at scrape time.

    At most ``max_feature_labels`` features get their own ``feature`` series, the most drifted
    first; the largest value among the others is exported as ``feature="_others"``, so a model
    of thousands of features stays a bounded number of series.
    """

    def __init__(
        self,
        source: Callable[[], tuple[DriftMonitor | None, Sequence[str]]],
        max_feature_labels: int,
        registry: CollectorRegistry,
    ) -> None:
        self.source, self.max_feature_labels = source, max_feature_labels
        registry.register(self)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # computed at each scrape; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        monitor, names = self.source()
        if monitor is None:
            return
        snapshot = monitor.snapshot()
        yield GaugeMetricFamily(
            "anomaly_drift_window_records",
            "Records in the window drift is measured over.",
            value=snapshot.records,
        )
        if snapshot.records < min(DRIFT_MIN_RECORDS, monitor.window_records):
            return
        psi = snapshot.feature_psi
        order = np.argsort(-psi, kind="stable")
        shown, rest = order[: self.max_feature_labels], order[self.max_feature_labels :]
        for name, values, help_text in (
            (
                "anomaly_feature_drift",
                psi,
                "Population stability index of the feature in the window against training "
                "(< 0.1 stable, 0.1-0.25 moderate, > 0.25 significant).",
            ),
            (
                "anomaly_feature_out_of_range_ratio",
                snapshot.out_of_range,
                "Share of the window's values outside the feature's training range.",
            ),
        ):
            family = GaugeMetricFamily(name, help_text, labels=["feature"])
            for j in shown:
                family.add_metric([names[j]], float(values[j]))
            if rest.size:
                family.add_metric([OTHER_FEATURES], float(values[rest].max()))
            yield family
        yield GaugeMetricFamily(
            "anomaly_score_drift",
            "Population stability index of the anomaly score in the window against held-out "
            "normal training rows.",
            value=snapshot.score_psi,
        )

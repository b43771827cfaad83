"""Collectors computed from numpy state: a histogram fed whole arrays, drift at scrape time."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from worker.contract.drift import DriftMonitor

__all__ = ["ArrayHistogram", "DriftCollector"]

#: The label value that carries the largest value of the features without a series of their own.
OTHER_FEATURES = "_others"
#: Drift is exported once the window holds this many records (or the whole window, if smaller):
#: PSI of n records against the same traffic is about (bins - 1) / n, 0.09 for 100 records.
DRIFT_MIN_RECORDS = 1_000


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

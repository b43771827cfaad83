"""Prometheus metrics of the worker, on an injected registry (tests read them back)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from worker.contract.drift import DriftMonitor
from worker.contract.messages import Partition
from worker.observe.collectors import OTHER_FEATURES, ArrayHistogram, DriftCollector

__all__ = ["WorkerMetrics"]

#: Ignored named features with a series of their own; the rest share ``feature="_others"``.
IGNORED_FEATURE_LABELS = 20

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
        self.records_by_baseline = Counter(
            "anomaly_records_scored_by_baseline",
            "Records scored by their entity's own baseline or the generic one (bundles with "
            "entity baselines only).",
            ["baseline"],
            registry=r,
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
            "Time per micro-batch from decoding to outputs handed over (batches overlap: "
            "it includes polling and decoding the next batch while this one is scored).",
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
        self.event_time_outside_range = Counter(
            "anomaly_event_time_outside_range",
            "Alerts whose record's event time is more than a day old or more than 5 minutes "
            "ahead (side: past, future): alerted, kept out of the latency histogram.",
            ["side"],
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
        self.entity_baselines = Gauge(
            "anomaly_model_entity_baselines",
            "Entities with a baseline of their own in the served model (0: one generic baseline).",
            registry=r,
        )
        self.ready = Gauge(
            "anomaly_ready", "1 when connected to the broker and serving, else 0.", registry=r
        )
        self.features_ignored_total = Counter(
            "anomaly_features_ignored",
            "Named features in records that the model does not have, ignored "
            "(ANOMALY_UNKNOWN_FEATURES=ignore); the first 20 names have their own series, the "
            'rest share feature="_others".',
            ["feature"],
            registry=r,
        )
        self.scores_dropped = Counter(
            "anomaly_scores_dropped",
            "Score records left out of ANOMALY_SCORES_TOPIC: too large to produce (a huge id).",
            registry=r,
        )
        self.producer_renewals = Counter(
            "anomaly_producer_renewals",
            "Times the broker no longer knew the worker's producer (restarted without its data, "
            "or the producer id expired): a new producer was created and the records since the "
            "last commit read again.",
            registry=r,
        )
        self.input_topic_recreated = Counter(
            "anomaly_input_topic_recreated",
            "Times the input topic was seen deleted and created again (a new topic id); its "
            "partitions were then read again from ANOMALY_AUTO_OFFSET_RESET's end.",
            registry=r,
        )
        self._lag_labelled: set[Partition] = set()
        self._ignored_labelled: set[str] = set()

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

    def set_lag(self, partition: Partition, records: int) -> None:
        self.consumer_lag.labels(partition=str(partition[1])).set(records)
        self._lag_labelled.add(partition)

    def forget_lag(self, partitions: Iterable[Partition]) -> None:
        """Drop the lag series of partitions this worker no longer owns."""
        for partition in set(partitions) & self._lag_labelled:
            self.consumer_lag.remove(str(partition[1]))
        self._lag_labelled -= set(partitions)

    def features_ignored(self, counts: dict[str, int]) -> list[str]:
        """Count ignored named features; returns the names seen for the first time."""
        first_seen = []
        for name, n in counts.items():
            if name not in self._ignored_labelled and len(self._ignored_labelled) < (
                IGNORED_FEATURE_LABELS
            ):
                self._ignored_labelled.add(name)
                first_seen.append(name)
            label = name if name in self._ignored_labelled else OTHER_FEATURES
            self.features_ignored_total.labels(feature=label).inc(n)
        return first_seen

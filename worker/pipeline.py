"""The worker's loop: poll -> decode -> score -> threshold -> alerts / dead letters -> commit.

Commit protocol (at-least-once), followed at every commit point (interval,
partitions revoked, shutdown):

1. every polled record has been processed (its alert or dead letter handed to
   the producer),
2. ``producer.flush()`` returns and no send failed (the broker acknowledged
   every output),
3. only then are the processed offsets committed.

A failed delivery raises :class:`~worker.exceptions.DeliveryError` before
anything is committed, so a restart re-reads those records.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.errors import CommitFailedError, KafkaError
from kafka.structs import OffsetAndMetadata

from worker.alerts import AlertContext, build_alerts
from worker.batching import BatchWindow
from worker.deadletters import build_dead_letter
from worker.exceptions import DeliveryError
from worker.health import HealthState
from worker.messages import SourceMessage
from worker.metrics import WorkerMetrics
from worker.offsets import OffsetTracker, Partition
from worker.records import DecodedBatch, FeatureSchema, decode_batch
from worker.reload import ModelWatcher
from worker.scoring import Scorer
from worker.threshold import Threshold

__all__ = ["Pipeline", "PipelineConfig"]

logger = logging.getLogger(__name__)

POLL_SLICE_SECONDS = 0.1  # longest single poll, so a stop request is seen quickly


@dataclass(frozen=True)
class PipelineConfig:
    input_topic: str
    alert_topic: str
    dlq_topic: str
    batch_max_records: int
    batch_max_wait_seconds: float
    max_record_bytes: int
    commit_interval_seconds: float
    top_features: int
    flush_timeout_seconds: float


def where(message: SourceMessage) -> str:
    return f"{message.topic}[{message.partition}]@{message.offset}"


class Pipeline:
    """Consumes, scores and produces until told to stop; owns the commit protocol."""

    def __init__(
        self,
        config: PipelineConfig,
        consumer: Any,
        producer: Any,
        scorer: Scorer,
        threshold: Threshold,
        metrics: WorkerMetrics,
        health: HealthState,
        clock: Callable[[], float] = time.monotonic,
        watcher: ModelWatcher | None = None,
    ) -> None:
        self.config = config
        self.consumer, self.producer = consumer, producer
        self.scorer, self.threshold = scorer, threshold
        self.schema = FeatureSchema(scorer.metadata.feature_names)
        self.metrics, self.health = metrics, health
        self.watcher = watcher
        self._clock = clock
        self._window = BatchWindow(config.batch_max_records, config.batch_max_wait_seconds, clock)
        self._pending: list[SourceMessage] = []
        self._pending_last: dict[Partition, int] = {}
        self._offsets = OffsetTracker()
        self._assigned: set[Partition] = set()
        self._lag_labelled: set[Partition] = set()
        self._failures: list[BaseException] = []
        self._failures_lock = threading.Lock()
        self._broken = False  # a delivery failed: never commit again in this process
        self._last_commit = clock()

    # --- the loop -------------------------------------------------------------------
    def subscribe(self) -> None:
        self.consumer.subscribe([self.config.input_topic], listener=_Listener(self))

    def run(self, stop: threading.Event, max_seconds: float | None = None) -> None:
        """Process until ``stop`` is set (or ``max_seconds`` pass), then drain and commit."""
        deadline = None if max_seconds is None else self._clock() + max_seconds
        while not stop.is_set() and (deadline is None or self._clock() < deadline):
            caught_up = self._collect(stop)
            self._process_pending()
            due = self._clock() - self._last_commit >= self.config.commit_interval_seconds
            if due or caught_up:
                self.commit()
            self._update_lag()
            self.health.beat()
        self._process_pending()
        self.commit()

    def _collect(self, stop: threading.Event) -> bool:
        """Fill the micro-batch until it is full, its wait is over, or nothing more is buffered.

        Once the batch has records, polls do not wait: when the client's buffer is
        empty its next fetch is already in flight, and processing the batch now
        overlaps that fetch instead of idling through it.

        Returns True when a poll came back empty: the worker has caught up, a
        good moment to commit without waiting for the interval.
        """
        window = self._window
        while not stop.is_set():
            wait = 0.0 if window.count else min(window.remaining_seconds(), POLL_SLICE_SECONDS)
            polled = self.consumer.poll(timeout_ms=int(wait * 1000), max_records=window.room)
            for tp, messages in polled.items():
                self._pending.extend(messages)
                self._pending_last[(tp.topic, tp.partition)] = messages[-1].offset
                window.add(len(messages))
            if not polled:
                return window.count == 0  # caught up, or the buffer is drained mid-stream
            if window.ready():
                return False
        return False

    def _process_pending(self) -> None:
        if self.watcher is not None:
            self._maybe_swap_model()
        if not self._pending:
            return
        messages, last = self._pending, self._pending_last
        self._pending, self._pending_last = [], {}
        self._window.reset()
        self.process(messages)
        for partition, offset in last.items():
            self._offsets.mark(partition, offset)

    def _maybe_swap_model(self) -> None:
        assert self.watcher is not None
        scorer = self.watcher.take()
        if scorer is None:
            return
        previous = self.scorer.metadata.version
        self.scorer = scorer
        if self.threshold.source == "bundle":
            self.threshold = Threshold(scorer.metadata.threshold)
        self.metrics.set_model(
            scorer.metadata.version,
            self.threshold.value,
            scorer.metadata.calibration.expected_alert_rate,
        )
        self.metrics.model_reloads.labels(result="loaded").inc()
        logger.info("now serving model %s (was %s)", scorer.metadata.version, previous)

    # --- one batch --------------------------------------------------------------------
    def process(self, messages: Sequence[SourceMessage]) -> None:
        """Decode, score and produce the outputs of one batch (offsets are the caller's)."""
        started = time.perf_counter()
        m = self.metrics
        m.records_consumed.inc(len(messages))
        m.batch_size.observe(len(messages))
        decoded = decode_batch(
            [msg.value for msg in messages], self.schema, self.config.max_record_bytes
        )
        for bad in decoded.invalid:
            self._dead_letter(messages[bad.position], bad.reason, bad.detail)
        if len(decoded.positions):
            t0 = time.perf_counter()
            scored = self.scorer.score(decoded.features)
            m.inference_duration.observe(time.perf_counter() - t0)
            m.records_scored.inc(len(decoded.positions))
            m.score_ratio.observe_many(self.threshold.ratio(scored.scores))
            rows = np.flatnonzero(self.threshold.decide(scored.scores))
            if rows.size:
                errors, expected = scored.details(rows)
                self._alert(messages, decoded, rows, scored.scores, errors, expected)
        m.batch_duration.observe(time.perf_counter() - started)
        m.last_processed.set(time.time())

    def _alert(
        self,
        messages: Sequence[SourceMessage],
        decoded: DecodedBatch,
        rows: np.ndarray,
        scores: np.ndarray,
        errors: np.ndarray,
        expected: np.ndarray,
    ) -> None:
        context = AlertContext(
            feature_names=self.schema.names,
            threshold=self.threshold.value,
            model_version=self.scorer.metadata.version,
            top_features=self.config.top_features,
            detected_at=time.time(),
        )
        sources = [messages[int(decoded.positions[r])] for r in rows]
        alerts = build_alerts(
            context,
            [decoded.records[r] for r in rows],
            sources,
            scores[rows],
            decoded.features[rows],
            errors,
            expected,
        )
        for alert, source in zip(alerts, sources, strict=True):
            future = self.producer.send(self.config.alert_topic, key=alert.key, value=alert.value)
            future.add_callback(self._alert_acked, alert.event_ts)
            future.add_errback(self._delivery_failed, source)
            logger.debug("alert for %s", where(source))
        self.metrics.alerts.inc(len(alerts))

    def _dead_letter(self, message: SourceMessage, reason: str, detail: str) -> None:
        letter = build_dead_letter(message, reason, detail)
        future = self.producer.send(
            self.config.dlq_topic, key=letter.key, value=letter.value, headers=letter.headers
        )
        future.add_errback(self._delivery_failed, message)
        self.metrics.records_invalid.labels(reason=reason).inc()
        logger.warning("dead letter %s: %s (%s)", where(message), reason, detail)

    def _alert_acked(self, event_ts: float, _metadata: object) -> None:
        self.metrics.end_to_end_latency.observe(max(time.time() - event_ts, 0.0))

    def _delivery_failed(self, message: SourceMessage, exc: BaseException) -> None:
        with self._failures_lock:
            self._failures.append(exc)
        logger.error("delivery failed for the output of %s: %r", where(message), exc)

    # --- commits and rebalances ---------------------------------------------------------
    def commit(self, partitions: Sequence[Partition] | None = None) -> None:
        """Flush the producer, then commit what it acknowledged (see the module docstring)."""
        self._last_commit = self._clock()
        if self._broken:
            return
        offsets = self._offsets.to_commit(partitions)
        if not offsets:
            return
        try:
            self.producer.flush(timeout=self.config.flush_timeout_seconds)
        except KafkaError as exc:
            self._broken = True
            raise DeliveryError(f"producer flush did not complete: {exc!r}") from exc
        with self._failures_lock:
            failures = list(self._failures)
        if failures:
            self._broken = True
            raise DeliveryError(
                f"{len(failures)} output(s) were not acknowledged (first: {failures[0]!r}); "
                "offsets not committed"
            )
        try:
            self.consumer.commit(
                {
                    TopicPartition(t, p): OffsetAndMetadata(o, "", -1)
                    for (t, p), o in offsets.items()
                }
            )
        except CommitFailedError as exc:
            # The group moved on without us; the new owner re-reads from the last commit.
            logger.warning("commit refused by the group (outputs may repeat): %s", exc)
            return
        self._offsets.committed(offsets)
        self.metrics.commits.inc()
        logger.debug("committed %s", offsets)

    def on_revoked(self, revoked: set[Partition]) -> None:
        """Finish the batch in hand, flush and commit before the partitions move."""
        if not self._broken:
            self._process_pending()
            self.commit()
        self._offsets.forget(revoked)
        self._assigned -= revoked
        for partition in revoked & self._lag_labelled:
            self.metrics.consumer_lag.remove(str(partition[1]))
        self._lag_labelled -= revoked
        if revoked:
            logger.info("partitions revoked: %s", sorted(revoked))

    def on_assigned(self, assigned: set[Partition]) -> None:
        self._assigned |= assigned
        self.health.set_ready(True, "ok")
        logger.info("partitions assigned: %s", sorted(assigned))

    def _update_lag(self) -> None:
        for topic, partition in self._assigned:
            high = self.consumer.highwater(TopicPartition(topic, partition))
            position = self._offsets.position((topic, partition))
            if high is not None and position is not None:
                self.metrics.consumer_lag.labels(partition=str(partition)).set(
                    max(high - position, 0)
                )
                self._lag_labelled.add((topic, partition))


class _Listener(ConsumerRebalanceListener):
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.pipeline.on_revoked({(tp.topic, tp.partition) for tp in revoked})

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.pipeline.on_assigned({(tp.topic, tp.partition) for tp in assigned})

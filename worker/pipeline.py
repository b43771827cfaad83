"""The worker's loop: poll -> decode -> score -> threshold -> alerts / dead letters -> commit.

Each step has one owner, wired together once by :mod:`worker.app`: the micro-batch
(:class:`~worker.core.batching.MicroBatch`), the served model
(:class:`~worker.model.served.ServedModel`), the outputs
(:class:`~worker.delivery.outputs.Outputs`), the commit protocol
(:class:`~worker.delivery.checkpoint.Committer`: at-least-once or exactly-once, chosen
once), the broker link's health (:class:`~worker.kafka.link.BrokerLink`) and the policy
for batches the client cannot decode
(:class:`~worker.delivery.undecodable.UndecodableBatches`). The pipeline runs the loop,
processes batches, and hands the rebalance callbacks to the committer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.contract.decode import decode_batch
from worker.contract.messages import Partition
from worker.contract.recent_threshold import Judgement
from worker.contract.records import DecodedBatch
from worker.contract.scoring import Scored
from worker.core.alerts import AlertContext, build_alerts
from worker.core.batching import MicroBatch
from worker.core.scores import build_score_batches, build_scores
from worker.delivery.checkpoint import Committer
from worker.delivery.exceptions import UndecodableBatchError
from worker.delivery.outputs import Outputs
from worker.delivery.ownership import Ownership
from worker.delivery.undecodable import SkipRange, UndecodableBatches
from worker.kafka.link import BrokerLink
from worker.kafka.ports import Chunk, Consumer, TransientError, UndecodableError
from worker.model.served import ServedModel
from worker.observe.health import HealthState
from worker.observe.metrics import WorkerMetrics

__all__ = ["LoopConfig", "Pipeline"]

logger = logging.getLogger(__name__)

POLL_SLICE_SECONDS = 0.1  # longest single poll, so a stop request is seen quickly


@dataclass(frozen=True)
class LoopConfig:
    input_topic: str
    max_record_bytes: int
    commit_interval_seconds: float
    top_features: int
    #: ANOMALY_UNKNOWN_FEATURES=ignore: score records carrying named features the model lacks.
    ignore_unknown_features: bool = True
    #: ANOMALY_SCORES_FORMAT=batch: one scores message per micro-batch and input partition.
    batch_scores: bool = False


class Pipeline:
    """Consumes, scores and produces until told to stop; commits through its committer."""

    def __init__(
        self,
        config: LoopConfig,
        consumer: Consumer,
        batch: MicroBatch,
        model: ServedModel,
        outputs: Outputs,
        committer: Committer,
        link: BrokerLink,
        undecodable: UndecodableBatches,
        metrics: WorkerMetrics,
        health: HealthState,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config, self.consumer, self.batch = config, consumer, batch
        self.model, self.outputs, self.committer = model, outputs, committer
        self.link, self.undecodable = link, undecodable
        self.metrics, self.health, self.clock = metrics, health, clock
        self.ownership = Ownership(config.input_topic, consumer, batch, committer, link, metrics)
        self._abandoned = False  # a fatal error happened: never process or commit again
        self._listener_error: BaseException | None = None
        self._last_commit = clock()

    # --- the loop -------------------------------------------------------------------
    def subscribe(self) -> None:
        """Subscribe; the client calls :meth:`prepare_revoke`, :meth:`committed`,
        :meth:`revoked`, :meth:`lost` and :meth:`on_assigned` as partitions move."""
        self.consumer.subscribe(self.config.input_topic, self)

    def run(self, stop: threading.Event, max_seconds: float | None = None) -> None:
        """Process until ``stop`` is set (or ``max_seconds`` pass), then drain and commit."""
        self.committer.stopping = stop.is_set
        try:
            deadline = None if max_seconds is None else self.clock() + max_seconds
            while not stop.is_set() and (deadline is None or self.clock() < deadline):
                caught_up = self._collect(stop)
                self._process_batch()
                due = self.clock() - self._last_commit >= self.config.commit_interval_seconds
                if due or caught_up:
                    self.commit()
                self.ownership.update_lag()
                self.ownership.watch_topic()
                self.link.follow(self.consumer.link_age(), bool(self.ownership.assigned))
                self.health.beat()
                if self.link.down:
                    stop.wait(self.link.backoff_seconds)
            self._process_batch()
            self.commit(final=True)
        except BaseException:
            self.abandon()
            raise

    def commit(self, final: bool = False) -> None:
        self._last_commit = self.clock()
        self.committer.commit(final)

    def abandon(self) -> None:
        """After a fatal error: drop the batch in hand, never process or commit again."""
        self._abandoned = True
        self.batch.take()
        self.committer.abandon()

    def add(self, chunk: Chunk) -> None:
        """Add polled records to the micro-batch being filled."""
        self.batch.add(chunk.messages, chunk.values, chunk.last)

    def _collect(self, stop: threading.Event) -> bool:
        """Fill the micro-batch until it is full, its wait is over, or nothing more is buffered.

        Once the batch has records, polls do not wait: when the client's buffer is
        empty its next fetch is already in flight, and processing the batch now
        overlaps that fetch instead of idling through it.

        Returns True when a poll came back empty: the worker has caught up, a
        good moment to commit without waiting for the interval.
        """
        window = self.batch.window
        while not stop.is_set():
            if self.link.holding():  # keep the client polling (it rejoins in poll), slowly
                wait, room = POLL_SLICE_SECONDS, max(window.room, 1)
            else:
                wait = 0.0 if window.count else min(window.remaining_seconds(), POLL_SLICE_SECONDS)
                room = window.room
            chunk = self._poll(wait, room)
            if chunk is None:
                return window.count == 0  # caught up, or the buffer is drained mid-stream
            self.add(chunk)
            if window.ready():
                return False
        return False

    def _poll(self, timeout: float, max_records: int) -> Chunk | None:
        try:
            chunk = self.consumer.poll(timeout, max_records)
        except UndecodableError as exc:
            self.link.polled()
            self._raise_listener_error()
            self._undecodable(exc)
            return None
        except TransientError as exc:
            self.link.polled()
            self._raise_listener_error()
            self.link.trouble(str(exc))
            return None
        self.link.polled()
        self._raise_listener_error()
        if chunk is not None and self.consumer.link_age() is None:
            self.link.ok()  # no heartbeat signal from this client: records are the best sign
        return chunk

    def _raise_listener_error(self) -> None:
        if self._listener_error is not None:
            error, self._listener_error = self._listener_error, None
            raise error

    def _process_batch(self) -> None:
        if self._abandoned or self.link.holding():
            return
        self.model.refresh()
        if not self.batch:
            return
        messages, values, last = self.batch.take()
        self.committer.processing(messages, last)
        self.process(messages, values)
        self.committer.processed(last)

    # --- one batch --------------------------------------------------------------------
    def process(self, messages: Sequence[Any], values: Sequence[bytes | None]) -> None:
        """Decode, score and produce the outputs of one batch (offsets are the caller's).

        ``messages`` are the client's records, ``values`` their values.
        """
        started = time.perf_counter()
        m, model = self.metrics, self.model
        m.records_consumed.inc(len(values))
        m.batch_size.observe(len(values))
        decoded = decode_batch(
            values, model.schema, self.config.max_record_bytes, self.config.ignore_unknown_features
        )
        source_of = self.consumer.source_of
        for bad in decoded.invalid:
            self.outputs.dead_letter(source_of(messages[bad.position]), bad.reason, bad.detail)
        model.watch_fit(decoded)
        if len(decoded.positions):
            t0 = time.perf_counter()
            scored = model.score(decoded)
            m.inference_duration.observe(time.perf_counter() - t0)
            m.records_scored.inc(len(decoded.positions))
            judged = model.decide(scored.scores, decoded.records)
            m.score_ratio.observe_many(scored.scores / judged.threshold)
            if model.drift is not None:
                model.drift.observe(decoded.features, scored.scores)
            rows = np.flatnonzero(judged.alert)
            if rows.size:
                self._alert(messages, decoded, scored, judged, rows)
            if self.outputs.scores_topic is not None:
                sources = [source_of(messages[p]) for p in decoded.positions.tolist()]
                version = model.scorer.metadata.version
                columns = (
                    decoded.records,
                    sources,
                    scored.scores,
                    judged.threshold,
                    judged.alert,
                    judged.warming,
                    version,
                    scored.baseline,
                )
                if self.config.batch_scores:
                    batches, dropped = build_score_batches(*columns, self.config.max_record_bytes)
                    self.outputs.scores(batches, sources, dropped)
                else:
                    self.outputs.scores(build_scores(*columns), sources)
        m.batch_duration.observe(time.perf_counter() - started)
        m.last_processed.set(time.time())

    def _alert(
        self,
        messages: Sequence[Any],
        decoded: DecodedBatch,
        scored: Scored,
        judged: Judgement,
        rows: np.ndarray,
    ) -> None:
        model = self.model
        errors, expected = scored.details(rows)
        context = AlertContext(
            feature_names=model.schema.names,
            threshold=model.threshold.value,
            model_version=model.scorer.metadata.version,
            top_features=self.config.top_features,
            detected_at=time.time(),
        )
        sources = [self.consumer.source_of(messages[int(decoded.positions[r])]) for r in rows]
        alerts = build_alerts(
            context,
            [decoded.records[r] for r in rows],
            sources,
            scored.scores[rows],
            decoded.features[rows],
            errors,
            expected,
            judged.threshold[rows],
            None if judged.warming is None else judged.warming[rows],
            None if scored.baseline is None else scored.baseline[rows],
        )
        self.outputs.alerts(alerts, sources)

    def _undecodable(self, exc: UndecodableError) -> None:
        """The client cannot decode a batch: stop naming it, or step past it and dead-letter it."""
        decision = self.undecodable.decide(exc)
        self._process_batch()  # what came before the batch
        if isinstance(decision, SkipRange):
            self.undecodable.step_past(decision)
            return
        # Stop cleanly: with that committed, a restart (after the batch is dealt with)
        # resumes exactly at the batch.
        self.commit(final=True)
        raise UndecodableBatchError(
            decision.topic, decision.partition, decision.offset, decision.reason
        ) from exc

    # --- partitions moving (the client calls these; see worker.kafka.ports) ---------------
    def prepare_revoke(self) -> dict[Partition, int]:
        """Before partitions move: finish the batch in hand; what the committer says to commit.

        kafka-python runs it on its IO thread (the main thread is blocked in poll
        or close meanwhile), librdkafka inside poll on the main thread; either way
        it must not call consumer methods. A failure is kept and raised from the
        main loop after the poll returns.
        """
        if self._abandoned:
            return {}
        self.link.membership_known()  # revoked, not lost: still a member
        try:
            self._process_batch()
            return self.committer.prepare_revoke()
        except Exception as exc:
            self.abandon()
            self._listener_error = exc
            return {}

    def committed(self, offsets: dict[Partition, int]) -> None:
        self.committer.committed(offsets)

    def revoked(self, revoked: set[Partition]) -> None:
        """Partitions are gone (committed or not): forget them, and any of their records held."""
        self.link.membership_known()
        self.ownership.gone(revoked)
        if revoked:
            logger.info("partitions revoked: %s", sorted(revoked))

    def lost(self, lost: set[Partition]) -> None:
        """The group evicted us (e.g. a network cut longer than the session): drop, no commit."""
        if not self._abandoned:
            try:
                self.committer.lost()
            except Exception as exc:
                self.abandon()
                self._listener_error = exc
        self.revoked(lost)
        if lost:
            logger.warning(
                "partitions lost (evicted from the group; their new owner re-reads them): %s",
                sorted(lost),
            )

    def on_assigned(self, assigned: set[Partition]) -> None:
        self.link.membership_known()
        self.ownership.gained(assigned)
        self.link.partitions_assigned()
        logger.info("partitions assigned: %s", sorted(assigned))

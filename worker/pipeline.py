"""The worker's loop: poll -> decode -> score -> threshold -> alerts / dead letters -> commit.

Each step has one owner, wired together once by :mod:`worker.app`: the micro-batch
(:class:`~worker.core.batching.MicroBatch`), the served model
(:class:`~worker.model.served.ServedModel`), one batch's work
(:class:`~worker.processing.BatchProcessor`), the outputs
(:class:`~worker.delivery.outputs.Outputs`), the commit protocol
(:class:`~worker.delivery.checkpoint.Committer`: at-least-once or exactly-once, chosen
once), the broker link's health (:class:`~worker.kafka.link.BrokerLink`) and the policy
for batches the client cannot decode
(:class:`~worker.delivery.undecodable.UndecodableBatches`). The pipeline runs the loop,
processes batches, and hands the rebalance callbacks to the committer.

Two batches overlap on a backlog: while batch N's model call runs on the processor's helper
thread (batches of ``OVERLAP_MIN_RECORDS`` and more; smaller ones are scored at once), the
loop polls and decodes batch N+1; then N is thresholded, its outputs handed over and its
offsets marked processed, and N+1's model call starts. Batch N is finished first whenever
anything else happens: before every commit, rebalance callback, partition drop, model
reload and stop, so the commit protocol sees what it saw without the overlap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.contract.messages import Partition
from worker.core.batching import MicroBatch
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
from worker.processing import BatchProcessor, InFlight, ProcessingConfig

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
        self.processor = BatchProcessor(
            ProcessingConfig(
                config.max_record_bytes,
                config.top_features,
                config.ignore_unknown_features,
                config.batch_scores,
            ),
            consumer,
            model,
            outputs,
            metrics,
        )
        self.ownership = Ownership(
            config.input_topic, consumer, batch, committer, link, metrics, self._finish_in_flight
        )
        self._in_flight: InFlight | None = None  # the batch whose model call is running
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
                self._advance()
                due = self.clock() - self._last_commit >= self.config.commit_interval_seconds
                if due or caught_up:
                    self.commit()
                self.ownership.update_lag()
                self.ownership.watch_topic()
                self.link.follow(self.consumer.link_age(), bool(self.ownership.assigned))
                self.health.beat()
                if self.link.down:
                    self._finish_in_flight()
                    stop.wait(self.link.backoff_seconds)
            self._process_batch()
            self.commit(final=True)
        except BaseException:
            self.abandon()
            raise
        finally:
            self.processor.close()

    def commit(self, final: bool = False) -> None:
        """A commit point: the batch in flight is finished first (its offsets then count)."""
        self._finish_in_flight()
        self._last_commit = self.clock()
        self.committer.commit(final)

    def abandon(self) -> None:
        """After a fatal error: drop the batches in hand and in flight, never process or
        commit again."""
        self._abandoned = True
        self.batch.take()
        self._in_flight = None
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

        With a batch in flight, polls do not wait either: records already buffered
        are collected while its model call runs; none buffered, it is finished at once
        rather than after a wait (its alerts would wait with it).
        """
        window = self.batch.window
        while not stop.is_set():
            if self.link.holding():  # keep the client polling (it rejoins in poll), slowly
                wait, room = POLL_SLICE_SECONDS, max(window.room, 1)
            elif window.count or self._in_flight is not None:
                wait, room = 0.0, window.room
            else:
                wait, room = min(window.remaining_seconds(), POLL_SLICE_SECONDS), window.room
            in_flight = self._in_flight is not None
            chunk = self._poll(wait, room)
            if chunk is None:  # caught up, or the buffer is drained mid-stream or mid-flight
                return window.count == 0 and not in_flight
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

    def _advance(self) -> None:
        """Finish the batch in flight and start the one in hand: decoding the new batch
        first, so that it overlaps the model call of the old."""
        if self._abandoned:
            return
        holding = self.link.holding()
        if holding or not self.batch:
            self._finish_in_flight()
            if not holding:
                self.model.refresh()  # a promoted model is served even while no record comes
            return
        messages, values, last = self.batch.take()
        schema, started = self.model.schema, time.perf_counter()
        decoded = self.processor.decode(values)
        self._finish_in_flight()
        self.model.refresh()
        if self.model.schema is not schema:  # a new model: decode against its features
            decoded = self.processor.decode(values)
        self.committer.processing(messages, last)
        self._in_flight = self.processor.begin(messages, last, decoded, started)
        if not self._in_flight.overlapped:  # scored already: nothing to overlap
            self._finish_in_flight()

    def _finish_in_flight(self) -> None:
        """Threshold the batch in flight, hand its outputs over, mark its offsets processed."""
        batch, self._in_flight = self._in_flight, None
        if batch is None or self._abandoned:
            return
        self.processor.finish(batch)
        self.committer.processed(batch.last)

    def _process_batch(self) -> None:
        """Process the batch in hand and the one in flight, to the end."""
        self._advance()
        self._finish_in_flight()

    def process(self, messages: Sequence[Any], values: Sequence[bytes | None]) -> None:
        """Decode, score and produce the outputs of one batch, to the end (offsets are the
        caller's). ``messages`` are the client's records, ``values`` their values."""
        self._finish_in_flight()
        started = time.perf_counter()
        decoded = self.processor.decode(values)
        self.processor.finish(self.processor.begin(messages, {}, decoded, started))

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
        """Before partitions move: finish the batches in hand and in flight; what the
        committer says to commit.

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
                self._finish_in_flight()  # as processed before the poll: its outputs go too
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

"""The worker's loop: poll -> decode -> score -> threshold -> alerts / dead letters -> commit.

Commit protocol, followed at every commit point (interval, partitions revoked,
shutdown). At-least-once (the default):

1. every polled record has been processed (its alert or dead letter handed to
   the producer),
2. ``producer.flush()`` returns and no send failed (the broker acknowledged
   every output),
3. only then are the processed offsets committed.

Exactly-once (``ANOMALY_PROCESSING_GUARANTEE=exactly_once``): the first output
after a commit begins a transaction; at the commit point every polled record has
been processed, the processed offsets are added to the transaction with the
consumer's group metadata (so the broker refuses them from a member the group
has moved on from), and the transaction commits: outputs and offsets become
readable together or not at all. A transaction that cannot commit is aborted
and its records are read again from the last committed offsets.

A failed delivery raises :class:`~worker.exceptions.DeliveryError` before
anything is committed, so a restart re-reads those records. After any fatal
error the pipeline is *abandoned*: nothing more is processed or committed, not
even by the rebalance listener that closing the consumer runs.

Faults that are not the records' fault are ridden out: a broker or network
outage while polling or committing is logged once per outage, makes ``/readyz``
answer 503, and is retried with capped backoff; the commit waits for the next
commit point. A record batch the client cannot decode stops the worker
(``fail``, exit 3) or is skipped with a headers-only dead letter (``skip``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.alerts import AlertContext, build_alerts
from worker.batching import BatchWindow
from worker.deadletters import DeadLetter, build_dead_letter, build_skipped_letter
from worker.drift import DriftMonitor
from worker.exceptions import DeliveryError, UndecodableBatchError
from worker.health import HealthState
from worker.logs import Throttle
from worker.messages import SourceMessage
from worker.metrics import WorkerMetrics
from worker.offsets import OffsetTracker, Partition
from worker.records import DecodedBatch, FeatureSchema, decode_batch
from worker.reload import ModelWatcher
from worker.scoring import Scorer
from worker.threshold import Threshold
from worker.transport import (
    Chunk,
    CommitRejected,
    Consumer,
    Producer,
    TransactionAbortable,
    TransientError,
    TransportError,
    UndecodableError,
)

__all__ = ["Pipeline", "PipelineConfig"]

logger = logging.getLogger(__name__)

POLL_SLICE_SECONDS = 0.1  # longest single poll, so a stop request is seen quickly
#: How long a commit may block before it is left for the next commit point.
COMMIT_TIMEOUT_SECONDS = 10.0
#: At most one log line per dead-letter reason per this many seconds.
DEAD_LETTER_LOG_SECONDS = 10.0
#: Longest wait for the producer at an interval commit; what is not flushed waits for the next.
FLUSH_SLICE_SECONDS = 5.0
#: Longest skip when stepping past an undecodable batch, in offsets.
MAX_SKIP_OFFSETS = 100_000
#: How long a probe waits for a fetch before taking an offset as readable.
PROBE_SECONDS = 5.0
#: exactly_once: this many transactions aborted in a row, none committed, stop the worker
#: (the same records keep failing; a restart, or a person, has to look).
MAX_ABORTS_IN_A_ROW = 5
#: How long a fatal error waits for its open transaction to be aborted.
ABORT_ON_FAILURE_SECONDS = 5.0


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
    on_undecodable_batch: str = "fail"
    backoff_max_seconds: float = 10.0
    #: The coordinator must have answered a heartbeat within this long for /readyz to say 200.
    link_stale_seconds: float = 5.0
    #: Commit each interval's outputs and offsets in one transaction (see the module docstring).
    exactly_once: bool = False
    #: exactly_once: how long a commit waits for an unreachable broker before the worker stops.
    delivery_timeout_seconds: float = 120.0
    #: Measure drift against the bundle's reference over this window (``drift``: at all).
    drift: bool = True
    drift_window_records: int = 10_000
    drift_window_seconds: float = 300.0


def where(message: SourceMessage) -> str:
    return f"{message.topic}[{message.partition}]@{message.offset}"


class Pipeline:
    """Consumes, scores and produces until told to stop; owns the commit protocol."""

    def __init__(
        self,
        config: PipelineConfig,
        consumer: Consumer,
        producer: Producer,
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
        self.drift = self._drift_monitor(scorer)
        self._window = BatchWindow(config.batch_max_records, config.batch_max_wait_seconds, clock)
        # The micro-batch being filled: the client's records, their values, last offsets.
        self._pending: list[Any] = []
        self._pending_values: list[bytes | None] = []
        self._pending_last: dict[Partition, int] = {}
        self._offsets = OffsetTracker()
        self._assigned: set[Partition] = set()
        self._lag_labelled: set[Partition] = set()
        self._failures: list[BaseException] = []
        self._failures_lock = threading.Lock()
        self._broken = False  # a fatal error happened: never process or commit again
        self._listener_error: BaseException | None = None
        self._last_commit = clock()
        self._trouble: str | None = None  # what is wrong with the broker link, while it lasts
        self._trouble_since = 0.0
        self._backoff = 0.0
        self._dead_letter_log = Throttle(DEAD_LETTER_LOG_SECONDS, lambda: self._clock())
        self._delivery_log = Throttle(DEAD_LETTER_LOG_SECONDS, lambda: self._clock())
        # exactly_once: the open transaction, its alerts' event times, transactions ended so
        # far (a failed delivery from an ended one is its abort's doing), aborts in a row.
        self._in_transaction = False
        self._transaction_event_times: list[float] = []
        self._transactions_ended = 0
        self._aborts_in_a_row = 0
        self._stop: threading.Event | None = None

    # --- the loop -------------------------------------------------------------------
    def subscribe(self) -> None:
        """Subscribe; the transport calls :meth:`prepare_revoke`, :meth:`committed`,
        :meth:`revoked`, :meth:`lost` and :meth:`on_assigned` as partitions move."""
        self.consumer.subscribe(self.config.input_topic, self)

    def run(self, stop: threading.Event, max_seconds: float | None = None) -> None:
        """Process until ``stop`` is set (or ``max_seconds`` pass), then drain and commit."""
        self._stop = stop
        try:
            deadline = None if max_seconds is None else self._clock() + max_seconds
            while not stop.is_set() and (deadline is None or self._clock() < deadline):
                caught_up = self._collect(stop)
                self._process_pending()
                due = self._clock() - self._last_commit >= self.config.commit_interval_seconds
                if due or caught_up:
                    self.commit()
                self._update_lag()
                self._update_readiness()
                self.health.beat()
                if self._trouble is not None:
                    stop.wait(self._backoff)
            self._process_pending()
            self.commit(final=True)
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """After a fatal error: drop the batch in hand, never commit again (not even on close);
        abort the open transaction."""
        self._broken = True
        self._take_pending()
        if self._in_transaction:
            self._close_transaction()
            try:
                self.producer.abort_transaction(ABORT_ON_FAILURE_SECONDS)
            except TransportError as exc:
                logger.warning(
                    "could not abort the open transaction (%s); the broker aborts it when this "
                    "worker's successor starts, or after ANOMALY_TRANSACTION_TIMEOUT_SECONDS",
                    exc,
                )

    def _take_pending(self) -> tuple[list[Any], list[bytes | None], dict[Partition, int]]:
        taken = self._pending, self._pending_values, self._pending_last
        self._pending, self._pending_values, self._pending_last = [], [], {}
        self._window.reset()
        return taken

    def add(self, chunk: Chunk) -> None:
        """Add polled records to the micro-batch being filled."""
        self._pending.extend(chunk.messages)
        self._pending_values.extend(chunk.values)
        self._pending_last.update(chunk.last)
        self._window.add(len(chunk.values))

    def _poll(self, timeout: float, max_records: int) -> Chunk | None:
        try:
            chunk = self.consumer.poll(timeout, max_records)
        except UndecodableError as exc:
            self._raise_listener_error()
            self._undecodable(exc)
            return None
        except TransientError as exc:
            self._raise_listener_error()
            self._link_trouble(str(exc))
            return None
        self._raise_listener_error()
        if chunk is not None and self.consumer.link_age() is None:
            self._link_ok()  # no heartbeat signal from this client: records are the best sign
        return chunk

    def _raise_listener_error(self) -> None:
        if self._listener_error is not None:
            error, self._listener_error = self._listener_error, None
            raise error

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
            chunk = self._poll(wait, window.room)
            if chunk is None:
                return window.count == 0  # caught up, or the buffer is drained mid-stream
            self.add(chunk)
            if window.ready():
                return False
        return False

    def _process_pending(self) -> None:
        if self._broken:
            return
        if self.watcher is not None:
            self._maybe_swap_model()
        if not self._pending:
            return
        messages, values, last = self._take_pending()
        if self.config.exactly_once:
            self._note_first_offsets(messages, last)
        self.process(messages, values)
        for partition, offset in last.items():
            self._offsets.mark(partition, offset)

    def _note_first_offsets(self, messages: Sequence[Any], last: dict[Partition, int]) -> None:
        """The first offset processed of each partition new to the tracker: where an aborted
        transaction re-reads it from when it has no committed offset yet (once per assignment)."""
        missing = {p for p in last if not self._offsets.started(p)}
        for message in messages if missing else ():
            source = self.consumer.source(message)
            partition = (source.topic, source.partition)
            if partition in missing:
                self._offsets.start(partition, source.offset)
                missing.discard(partition)
                if not missing:
                    break

    def _maybe_swap_model(self) -> None:
        assert self.watcher is not None
        scorer = self.watcher.take()
        if scorer is None:
            return
        previous = self.scorer.metadata.version
        self.scorer = scorer
        self.drift = self._drift_monitor(scorer)  # a new reference: a fresh window
        if self.threshold.source == "bundle":
            self.threshold = Threshold(scorer.metadata.threshold)
        self.metrics.set_model(
            scorer.metadata.version,
            self.threshold.value,
            scorer.metadata.calibration.expected_alert_rate,
        )
        self.metrics.model_reloads.labels(result="loaded").inc()
        logger.info("now serving model %s (was %s)", scorer.metadata.version, previous)

    def _drift_monitor(self, scorer: Scorer) -> DriftMonitor | None:
        reference = scorer.metadata.drift_reference
        if not self.config.drift:
            return None
        if reference is None:
            logger.info(
                "model %s carries no drift reference (written by an older anomaly-train): "
                "drift is not measured",
                scorer.metadata.version,
            )
            return None
        return DriftMonitor.from_reference(
            reference, self.config.drift_window_records, self.config.drift_window_seconds
        )

    # --- the broker link ------------------------------------------------------------------
    def _link_trouble(self, what: str) -> None:
        """A transient broker/network fault: say so once, stop being ready, back off."""
        now = self._clock()
        if self._trouble is None:
            self._trouble_since = now
            logger.warning("broker unreachable (%s); retrying with backoff", what)
        self._trouble = what
        self._backoff = min(max(self._backoff * 2, 0.1), self.config.backoff_max_seconds)
        self.health.set_ready(False, f"broker unreachable: {what}")

    def _since_trouble(self) -> float:
        return self._clock() - self._trouble_since

    def _link_ok(self) -> None:
        if self._trouble is not None:
            logger.info("broker reachable again after %.1fs", self._since_trouble())
        self._trouble = None
        self._backoff = 0.0

    def _update_readiness(self) -> None:
        age = self.consumer.link_age() if self._assigned else None
        if age is not None and age > self.config.link_stale_seconds:
            self._link_trouble(f"no heartbeat answer from the group coordinator for {age:.0f}s")
        elif self._trouble is not None and age is not None and age < self._since_trouble():
            self._link_ok()  # the coordinator answered since the trouble began
        if self._trouble is None and self._assigned:
            self.health.set_ready(True, "ok")

    # --- undecodable batches --------------------------------------------------------------
    def _undecodable(self, exc: UndecodableError) -> None:
        """The client cannot decode a batch: stop naming it, or step past it and dead-letter it."""
        reason = exc.reason
        located = self._locate_undecodable(exc)
        topic, partition, offset = located if located else (self.config.input_topic, -1, -1)
        self._process_pending()  # what came before the batch
        if self.config.on_undecodable_batch != "skip" or located is None:
            # Stop cleanly: with that committed, a restart (after the batch is dealt with)
            # resumes exactly at the batch.
            self.commit(final=True)
            raise UndecodableBatchError(topic, partition, offset, reason) from exc
        resume = self._first_decodable((topic, partition), offset)
        self.consumer.seek((topic, partition), resume)
        letter = build_skipped_letter(topic, partition, offset, resume - 1, "undecodable", reason)
        self._send(self.config.dlq_topic, letter, f"{topic}[{partition}]@{offset}")
        self.metrics.records_skipped.labels(reason="undecodable").inc(resume - offset)
        # The skipped range counts as processed: its outcome is the dead letter above.
        self._offsets.mark((topic, partition), resume - 1)
        logger.error(
            "skipped %s[%d]@%d..%d: the Kafka client cannot decode the batch (%s)",
            topic,
            partition,
            offset,
            resume - 1,
            reason,
        )

    def _locate_undecodable(self, exc: UndecodableError) -> tuple[str, int, int] | None:
        """Which partition is stuck, at which offset: from the error, else by probing each."""
        if exc.partition is not None and exc.offset is not None:
            return exc.partition[0], exc.partition[1], exc.offset
        for partition in sorted(self.consumer.assignment()):
            position = self.consumer.position(partition)
            if self.consumer.probe_fails(partition, position, PROBE_SECONDS):
                return partition[0], partition[1], position
        return None

    def _first_decodable(self, partition: Partition, offset: int) -> int:
        """The first offset after ``offset`` from which ``partition`` reads again (bounded)."""
        high = self.consumer.highwater(partition)
        candidate = offset + 1
        while candidate - offset < MAX_SKIP_OFFSETS:
            if high is not None and candidate >= high:
                break
            if not self.consumer.probe_fails(partition, candidate, PROBE_SECONDS):
                break
            candidate += 1
        return candidate

    # --- one batch --------------------------------------------------------------------
    def process(self, messages: Sequence[Any], values: Sequence[bytes | None]) -> None:
        """Decode, score and produce the outputs of one batch (offsets are the caller's).

        ``messages`` are the client's records, ``values`` their values.
        """
        started = time.perf_counter()
        m = self.metrics
        m.records_consumed.inc(len(values))
        m.batch_size.observe(len(values))
        decoded = decode_batch(values, self.schema, self.config.max_record_bytes)
        source = self.consumer.source
        for bad in decoded.invalid:
            self._dead_letter(source(messages[bad.position]), bad.reason, bad.detail)
        if len(decoded.positions):
            t0 = time.perf_counter()
            scored = self.scorer.score(decoded.features)
            m.inference_duration.observe(time.perf_counter() - t0)
            m.records_scored.inc(len(decoded.positions))
            m.score_ratio.observe_many(self.threshold.ratio(scored.scores))
            if self.drift is not None:
                self.drift.observe(decoded.features, scored.scores)
            rows = np.flatnonzero(self.threshold.decide(scored.scores))
            if rows.size:
                errors, expected = scored.details(rows)
                self._alert(messages, decoded, rows, scored.scores, errors, expected)
        m.batch_duration.observe(time.perf_counter() - started)
        m.last_processed.set(time.time())

    def _alert(
        self,
        messages: Sequence[Any],
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
        to_source = self.consumer.source
        sources = [to_source(messages[int(decoded.positions[r])]) for r in rows]
        alerts = build_alerts(
            context,
            [decoded.records[r] for r in rows],
            sources,
            scores[rows],
            decoded.features[rows],
            errors,
            expected,
        )
        sent = 0
        for alert, source in zip(alerts, sources, strict=True):
            if len(alert.key) + len(alert.value) > self.config.max_record_bytes:
                # A huge id or entity: the alert cannot be produced, its record is dead-lettered.
                size = len(alert.key) + len(alert.value)
                self._dead_letter(source, "alert_too_large", f"the alert would be {size} bytes")
                continue
            self._produce(
                self.config.alert_topic,
                alert.key,
                alert.value,
                None,
                self._on_alert_delivery(alert.event_ts, source),
            )
            if self.config.exactly_once:  # readable once its transaction commits
                self._transaction_event_times.append(alert.event_ts)
            sent += 1
            logger.debug("alert for %s", where(source))
        self.metrics.alerts.inc(sent)

    def _dead_letter(self, message: SourceMessage, reason: str, detail: str) -> None:
        letter = build_dead_letter(message, reason, detail, self.config.max_record_bytes)
        self._send(self.config.dlq_topic, letter, where(message))
        self.metrics.records_invalid.labels(reason=reason).inc()
        # One line per reason per interval (a 1% malformed rate at 100k records/s would
        # otherwise log 1,000 lines a second); the metric counts every one.
        held = self._dead_letter_log.allow(reason)
        if held is None:
            return
        more = f"; {held} more {reason} since the last line" if held else ""
        logger.warning("dead letter %s: %s (%s)%s", where(message), reason, detail, more)

    def _send(self, topic: str, letter: DeadLetter, source: str) -> None:
        # kafka-python cannot produce a record with neither key nor value (a key-less
        # tombstone, a skipped range): such a dead letter gets an empty value.
        value = b"" if letter.key is None and letter.value is None else letter.value

        transaction = self._transactions_ended

        def delivered(error: BaseException | None) -> None:
            if error is not None:
                self._delivery_failed(source, error, transaction)

        self._produce(topic, letter.key, value, letter.headers, delivered)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        on_delivery: Callable[[BaseException | None], None],
    ) -> None:
        """Hand one output to the producer, inside a transaction with exactly_once."""
        if self.config.exactly_once and not self._in_transaction:
            self.producer.begin_transaction()
            self._in_transaction = True
        self.producer.send(topic, key, value, headers, on_delivery)

    def _on_alert_delivery(
        self, event_ts: float, source: SourceMessage
    ) -> Callable[[BaseException | None], None]:
        transaction = self._transactions_ended
        observe = not self.config.exactly_once  # exactly_once: observed when committed

        def delivered(error: BaseException | None) -> None:
            if error is None:
                if observe:
                    self.metrics.end_to_end_latency.observe(max(time.time() - event_ts, 0.0))
            else:
                self._delivery_failed(where(source), error, transaction)

        return delivered

    def _delivery_failed(self, source: str, exc: BaseException, transaction: int) -> None:
        if transaction < self._transactions_ended:
            return  # an output of a transaction already aborted (by the abort, or for this)
        with self._failures_lock:
            self._failures.append(exc)
        held = self._delivery_log.allow(type(exc).__name__)
        if held is not None:
            more = f"; {held} more since the last line" if held else ""
            logger.error("delivery failed for the output of %s: %r%s", source, exc, more)

    # --- commits and rebalances ---------------------------------------------------------
    def commit(self, partitions: Sequence[Partition] | None = None, final: bool = False) -> None:
        """Flush the producer, then commit what it acknowledged (see the module docstring).

        A broker that does not answer in time leaves the offsets for the next
        commit point (``final``: the shutdown commit raises instead, so the exit
        code says the last commit did not happen).
        """
        self._last_commit = self._clock()
        if self.config.exactly_once:
            self._commit_transaction(final=final)
            return
        offsets = self.acknowledged(partitions, final)
        if not offsets:
            return
        try:
            self.consumer.commit(offsets, COMMIT_TIMEOUT_SECONDS)
        except TransientError as exc:
            if final:
                raise
            if isinstance(exc, CommitRejected):
                # The group moved on without us; the new owner re-reads from the last commit.
                logger.warning("commit refused by the group (outputs may repeat): %s", exc)
            else:
                self._link_trouble(str(exc))
            return
        self.committed(offsets)
        self._link_ok()  # the broker answered

    def acknowledged(
        self, partitions: Sequence[Partition] | None = None, final: bool = False
    ) -> dict[Partition, int]:
        """Flush the producer; the offsets it is now safe to commit (steps 1-2 of the protocol).

        An output the broker refused raises DeliveryError (and abandons the
        pipeline). A flush that does not finish in time (the broker is away; the
        producer keeps retrying for ``ANOMALY_DELIVERY_TIMEOUT_SECONDS``) only
        postpones the commit, except at shutdown (``final``).
        """
        if self._broken:
            return {}
        offsets = self._offsets.to_commit(partitions)
        if not offsets:
            return {}
        self._raise_delivery_failures()  # an output already given up on: stop now
        timeout = self.config.flush_timeout_seconds
        try:
            self.producer.flush(timeout if final else min(timeout, FLUSH_SLICE_SECONDS))
        except TransportError as exc:
            if not final and isinstance(exc, TransientError):
                self._link_trouble(str(exc))
                return {}
            self.abandon()
            raise DeliveryError(
                f"the producer did not deliver the outputs within {timeout:.0f}s ({exc!r}); "
                "offsets not committed"
            ) from exc
        self._raise_delivery_failures()
        return offsets

    def _raise_delivery_failures(self) -> None:
        with self._failures_lock:
            failures = list(self._failures)
        if failures:
            self.abandon()
            raise DeliveryError(
                f"{len(failures)} output(s) were not acknowledged (first: {failures[0]!r}); "
                "offsets not committed"
            )

    def committed(self, offsets: dict[Partition, int]) -> None:
        self._offsets.committed(offsets)
        self.metrics.commits.inc()
        logger.debug("committed %s", offsets)

    def prepare_revoke(self) -> dict[Partition, int]:
        """Before partitions move: finish the batch in hand, flush; what to commit.

        kafka-python runs it on its IO thread (the main thread is blocked in poll
        or close meanwhile), librdkafka inside poll on the main thread; either way
        it must not call consumer methods. A failure is kept and raised from the
        main loop after the poll returns.
        """
        if self._broken:
            return {}
        try:
            self._process_pending()
            if self.config.exactly_once:
                self._commit_transaction(revoking=True)
                return {}  # committed with the transaction (or aborted: re-read by the new owner)
            return self.acknowledged()
        except Exception as exc:
            self.abandon()
            self._listener_error = exc
            return {}

    def revoked(self, revoked: set[Partition]) -> None:
        """Partitions are gone (committed or not): forget them."""
        self._offsets.forget(revoked)
        self._assigned -= revoked
        for partition in revoked & self._lag_labelled:
            self.metrics.consumer_lag.remove(str(partition[1]))
        self._lag_labelled -= revoked
        if revoked:
            logger.info("partitions revoked: %s", sorted(revoked))

    def lost(self, lost: set[Partition]) -> None:
        """The group evicted us (e.g. a network cut longer than the session): drop, no commit."""
        if self._in_transaction and not self._broken:
            try:  # its outputs are the new owners' to produce again
                self._abort_transaction("partitions lost", rewind=False)
            except Exception as exc:
                self.abandon()
                self._listener_error = exc
        messages, values, last = self._take_pending()
        source = self.consumer.source
        where_from = [source(m) for m in messages]
        kept = [i for i, m in enumerate(where_from) if (m.topic, m.partition) not in lost]
        self.add(
            Chunk(
                [messages[i] for i in kept],
                [values[i] for i in kept],
                {p: o for p, o in last.items() if p not in lost},
            )
        )
        self.revoked(lost)
        if lost:
            logger.warning(
                "partitions lost (evicted from the group; their new owner re-reads them): %s",
                sorted(lost),
            )

    def on_assigned(self, assigned: set[Partition]) -> None:
        self._assigned |= assigned
        if self._trouble is None:
            self.health.set_ready(True, "ok")
        logger.info("partitions assigned: %s", sorted(assigned))

    # --- exactly-once: transactions ------------------------------------------------------
    def _commit_transaction(self, final: bool = False, revoking: bool = False) -> None:
        """Commit the open transaction with the processed offsets (see the module docstring).

        An unreachable broker is waited for (``/readyz`` 503, capped backoff) up to the
        delivery timeout, or the shutdown timeout at shutdown and before partitions move;
        then the transaction is aborted and DeliveryError stops the worker (before a
        rebalance the abort alone is enough: the new owner re-reads). A transaction the
        broker refuses to commit (e.g. the group moved on) is aborted and re-read.
        """
        if self._broken:
            return
        offsets = self._offsets.to_commit()
        if not offsets and not self._in_transaction:
            return
        self._raise_delivery_failures()
        if not self._in_transaction:
            self.producer.begin_transaction()  # offsets alone: nothing was sent since the last
            self._in_transaction = True
        short = final or revoking
        bound = self.config.flush_timeout_seconds if short else self.config.delivery_timeout_seconds
        deadline = self._clock() + bound
        while True:
            if not short and self._stop is not None and self._stop.is_set():
                deadline = min(deadline, self._clock() + self.config.flush_timeout_seconds)
            wait = min(max(deadline - self._clock(), 0.1), FLUSH_SLICE_SECONDS)
            try:
                self.producer.commit_transaction(offsets, self.consumer.group_metadata(), wait)
                break
            except TransactionAbortable as exc:
                self._abort_transaction(str(exc), rewind=not revoking)
                return
            except TransientError as exc:
                if self._clock() < deadline:
                    self._link_trouble(str(exc))
                    self.health.beat()
                    time.sleep(min(self._backoff, max(deadline - self._clock(), 0.0)))
                    continue
                if revoking:
                    self._abort_transaction(f"not committed within {bound:g}s: {exc}", False)
                    return
                self.abandon()
                raise DeliveryError(
                    f"the transaction did not commit within {bound:g}s ({exc}); "
                    "it is aborted and nothing past the last commit is committed"
                ) from exc
            except TransportError:
                self.abandon()
                raise
        self._close_transaction()
        self._aborts_in_a_row = 0
        self.metrics.transactions.labels(result="committed").inc()
        now = time.time()
        for event_ts in self._transaction_event_times:
            self.metrics.end_to_end_latency.observe(max(now - event_ts, 0.0))
        self._transaction_event_times.clear()
        self.committed(offsets)
        self._link_ok()

    def _close_transaction(self) -> None:
        self._in_transaction = False
        self._transactions_ended += 1

    def _abort_transaction(self, why: str, rewind: bool = True) -> None:
        """Abort the open transaction: nothing it sent becomes readable, its records are read
        again (``rewind``: here, from the last committed offsets; else by the partitions'
        next owner, as both clients revoke every partition at a rebalance)."""
        with self._failures_lock:
            refused = list(self._failures)  # outputs refused before the abort: the cause
        self._close_transaction()  # deliveries failing from here on are the abort's doing
        try:
            self.producer.abort_transaction(self.config.flush_timeout_seconds)
        except TransportError as exc:
            self.abandon()
            raise DeliveryError(f"the transaction could not be aborted ({exc})") from exc
        with self._failures_lock:
            self._failures = refused
        self._transaction_event_times.clear()
        self.metrics.transactions.labels(result="aborted").inc()
        self._aborts_in_a_row += 1
        logger.warning("transaction aborted (its records are processed again): %s", why)
        self._raise_delivery_failures()
        if self._aborts_in_a_row >= MAX_ABORTS_IN_A_ROW:
            self.abandon()
            raise DeliveryError(f"{self._aborts_in_a_row} transactions aborted in a row: {why}")
        if rewind:
            self._take_pending()
            for partition, offset in self._offsets.rewind().items():
                self.consumer.seek(partition, offset)

    def _update_lag(self) -> None:
        for partition in self._assigned:
            high = self.consumer.highwater(partition)
            position = self._offsets.position(partition)
            if high is not None and position is not None:
                self.metrics.consumer_lag.labels(partition=str(partition[1])).set(
                    max(high - position, 0)
                )
                self._lag_labelled.add(partition)

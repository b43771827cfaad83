"""The commit protocol, owned by one object chosen once (:mod:`worker.app`): a committer.

Every commit point goes through it: the interval (or the moment the worker has caught
up), partitions being revoked, partitions lost, and shutdown.

:class:`AtLeastOnce` (the default), at every commit point:

1. every polled record has been processed (its alert or dead letter handed to
   the producer),
2. ``producer.flush()`` returns and no send failed (the broker acknowledged
   every output),
3. only then are the processed offsets committed.

:class:`~worker.delivery.transactions.Transactional`
(``ANOMALY_PROCESSING_GUARANTEE=exactly_once``) commits each interval's outputs and
offsets in one Kafka transaction instead.

A failed delivery raises :class:`~worker.delivery.exceptions.DeliveryError` before
anything is committed, so a restart re-reads those records. After any fatal error the
committer is *abandoned*: nothing more is committed, not even by the rebalance listener
that closing the consumer runs. A broker that does not answer in time leaves the offsets
for the next commit point (at shutdown the commit raises instead, so the exit code says
the last commit did not happen).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from worker.contract.messages import Partition
from worker.core.offsets import OffsetTracker
from worker.delivery.exceptions import DeliveryError
from worker.delivery.outputs import DeliveryFailures
from worker.kafka.link import BrokerLink
from worker.kafka.ports import (
    CommitRejected,
    Consumer,
    Producer,
    ProducerStateLost,
    TransientError,
    TransportError,
)
from worker.observe.metrics import WorkerMetrics

__all__ = ["COMMIT_TIMEOUT_SECONDS", "MAX_RENEWALS_IN_A_ROW", "AtLeastOnce", "Committer"]

logger = logging.getLogger(__name__)

#: How long a commit may block before it is left for the next commit point.
COMMIT_TIMEOUT_SECONDS = 10.0
#: Longest wait for the producer at an interval commit; what is not flushed waits for the next.
FLUSH_SLICE_SECONDS = 5.0
#: A new producer forgotten this many times in a row, nothing committed: stop (exit 1).
MAX_RENEWALS_IN_A_ROW = 5


class Committer(ABC):
    """What both guarantees share: the processed offsets, the delivery failures, abandonment.

    Subclasses write :meth:`commit`, :meth:`prepare_revoke` and what they do around sends.
    """

    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        failures: DeliveryFailures,
        link: BrokerLink,
        metrics: WorkerMetrics,
        shutdown_timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.consumer, self.producer = consumer, producer
        self.failures, self.link, self.metrics = failures, link, metrics
        #: At shutdown (and before partitions move) the flush and commit take at most this long.
        self.shutdown_timeout_seconds = shutdown_timeout_seconds
        self.clock = clock
        self.offsets = OffsetTracker()
        self.abandoned = False
        #: Set by the loop: whether a stop was requested.
        self.stopping: Callable[[], bool] = lambda: False

    # --- around each output (see worker.delivery.outputs.OutputGuarantee) ---------------
    @abstractmethod
    def before_send(self) -> None:
        """An output is about to be handed to the producer."""

    @abstractmethod
    def alert_sent(self, event_ts: float) -> None:
        """An alert whose latency is measured (its record's event time ``event_ts`` is
        plausible) was handed to the producer."""

    @abstractmethod
    def alert_acknowledged(self, event_ts: float) -> None:
        """The broker acknowledged such an alert."""

    # --- around each batch ------------------------------------------------------------
    def processing(self, messages: Sequence[Any], last: dict[Partition, int]) -> None:
        """A batch is about to be processed: note the first offset processed of each partition
        new to the tracker, where its records are read again from when it has no committed
        offset yet (once per assignment)."""
        missing = {p for p in last if not self.offsets.started(p)}
        for message in messages if missing else ():
            source = self.consumer.source_of(message)
            partition = (source.topic, source.partition)
            if partition in missing:
                self.offsets.start(partition, source.offset)
                missing.discard(partition)
                if not missing:
                    break

    def processed(self, last: dict[Partition, int]) -> None:
        """Every record of each partition up to ``last[partition]`` is processed."""
        for partition, offset in last.items():
            self.offsets.mark(partition, offset)

    def position(self, partition: Partition) -> int | None:
        return self.offsets.position(partition)

    # --- commit points ------------------------------------------------------------------
    @abstractmethod
    def commit(self, final: bool = False) -> None:
        """Commit what is processed and delivered (``final``: at shutdown, raise if not done)."""

    @abstractmethod
    def prepare_revoke(self) -> dict[Partition, int]:
        """Before partitions move (the batch in hand is processed): the offsets to commit."""

    @abstractmethod
    def lost(self) -> None:
        """The group evicted this worker: whatever is open is the new owners' to redo."""

    def committed(self, offsets: dict[Partition, int]) -> None:
        self.offsets.committed(offsets)
        self.metrics.commits.inc()
        logger.debug("committed %s", offsets)

    def forget(self, partitions: Iterable[Partition]) -> None:
        self.offsets.forget(partitions)

    def abandon(self) -> None:
        """After a fatal error: never commit again (not even on close)."""
        self.abandoned = True

    def _raise_delivery_failures(self) -> None:
        try:
            self.failures.raise_any()
        except DeliveryError:
            self.abandon()
            raise


class AtLeastOnce(Committer):
    """Flush, then commit what the broker acknowledged (the module docstring's protocol)."""

    _renewals_in_a_row = 0  # producers renewed since the last commit

    def before_send(self) -> None:
        pass  # outputs go out as they come; the commit waits for their acknowledgements

    def alert_sent(self, event_ts: float) -> None:
        pass  # not readable yet: observed when acknowledged

    def alert_acknowledged(self, event_ts: float) -> None:
        """An alert is readable once the broker has acknowledged it."""
        self.metrics.end_to_end_latency.observe(max(time.time() - event_ts, 0.0))

    def lost(self) -> None:
        pass  # nothing is open: what was not committed, the new owner re-reads

    def commit(self, final: bool = False) -> None:
        offsets = self._offsets_after_flush(final)
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
                self.link.trouble(str(exc))
            return
        self.committed(offsets)
        self._renewals_in_a_row = 0
        self.link.ok()  # the broker answered

    def prepare_revoke(self) -> dict[Partition, int]:
        return self._offsets_after_flush(final=False)

    def _delivered(self) -> bool:
        """Whether every output handed over so far is still on its way or acknowledged.

        An output the broker refused raises DeliveryError (and abandons), except when the
        broker forgot the producer (:class:`ProducerStateLost`): then the producer is renewed,
        the records since the last commit are read again (their outputs were lost in flight),
        and this commit point commits nothing.
        """
        failures = self.failures.snapshot()
        if not failures:
            return True
        if not all(isinstance(f, ProducerStateLost) for f in failures):
            self._raise_delivery_failures()
        self._renew_producer(failures)
        return False

    def _renew_producer(self, failures: list[BaseException]) -> None:
        self._renewals_in_a_row += 1
        if self._renewals_in_a_row >= MAX_RENEWALS_IN_A_ROW:
            self.abandon()
            raise DeliveryError(
                f"the broker forgot {MAX_RENEWALS_IN_A_ROW} new producers in a row, none "
                f"committed ({failures[0]}); offsets not committed"
            )
        self.failures.end_epoch()  # what the old producer reports from here on: ignored
        self.failures.restore([])
        self.producer.renew()
        points = self.offsets.rewind()
        for partition, offset in points.items():
            self.consumer.seek(partition, offset)
        self.metrics.producer_renewals.inc()
        logger.warning(
            "the broker no longer knows this worker's producer (%s; restarted without its "
            "data, or the producer id expired): %d output(s) reported lost in flight; a new "
            "producer is up and %d partition(s) are read again from their last commit",
            failures[0],
            len(failures),
            len(points),
        )

    def _offsets_after_flush(self, final: bool) -> dict[Partition, int]:
        """Flush the producer; the offsets it is now safe to commit (steps 1-2 of the protocol).

        An output the broker refused raises DeliveryError (and abandons). A flush that does
        not finish in time (the broker is away; the producer keeps retrying for
        ``ANOMALY_DELIVERY_TIMEOUT_SECONDS``) only postpones the commit, except at shutdown
        (``final``).
        """
        if self.abandoned:
            return {}
        offsets = self.offsets.to_commit()
        if not offsets:
            return {}
        if not self._delivered():  # an output already given up on: stop now, or renew
            return {}
        timeout = self.shutdown_timeout_seconds
        try:
            self.producer.flush(timeout if final else min(timeout, FLUSH_SLICE_SECONDS))
        except ProducerStateLost as exc:
            self._renew_producer([exc])
            return {}
        except TransportError as exc:
            if not final and isinstance(exc, TransientError):
                self.link.trouble(str(exc))
                return {}
            self.abandon()
            raise DeliveryError(
                f"the producer did not deliver the outputs within {timeout:.0f}s ({exc!r}); "
                "offsets not committed"
            ) from exc
        return offsets if self._delivered() else {}

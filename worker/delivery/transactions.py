"""exactly_once: each interval's outputs and offsets in one Kafka transaction.

The first output after a commit begins a transaction; at the commit point every
polled record has been processed, the processed offsets are added to the
transaction with the consumer's group metadata (so the broker refuses them from a
member the group has moved on from), and the transaction commits: outputs and
offsets become readable together or not at all. A transaction that cannot commit
is aborted and its records are read again from the last committed offsets.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from worker.contract.messages import Partition
from worker.delivery.checkpoint import Committer
from worker.delivery.exceptions import DeliveryError
from worker.kafka.ports import TransactionAbortable, TransientError, TransportError

__all__ = ["ABORT_ON_FAILURE_SECONDS", "MAX_ABORTS_IN_A_ROW", "Transactional"]

logger = logging.getLogger(__name__)

#: This many transactions aborted in a row, none committed, stop the worker
#: (the same records keep failing; a restart, or a person, has to look).
MAX_ABORTS_IN_A_ROW = 5
#: How long a fatal error waits for its open transaction to be aborted.
ABORT_ON_FAILURE_SECONDS = 5.0
#: Longest single wait for the transaction coordinator; the commit retries until its bound.
COMMIT_SLICE_SECONDS = 5.0


class Transactional(Committer):
    """One transaction per commit point (the module docstring's protocol)."""

    def __init__(self, *args: Any, delivery_timeout_seconds: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: How long a commit waits for an unreachable broker before the worker stops.
        self.delivery_timeout_seconds = delivery_timeout_seconds
        self.open = False
        self._event_times: list[float] = []  # of the open transaction's alerts
        self._aborts_in_a_row = 0

    # --- around each output -----------------------------------------------------------
    def before_send(self) -> None:
        if not self.open:
            self.producer.begin_transaction()
            self.open = True

    def alert_sent(self, event_ts: float) -> None:
        self._event_times.append(event_ts)  # readable once its transaction commits

    def alert_acknowledged(self, event_ts: float) -> None:
        pass  # observed when its transaction commits

    # --- commit points -------------------------------------------------------------------
    def commit(self, final: bool = False) -> None:
        self._commit_transaction(final=final)

    def prepare_revoke(self) -> dict[Partition, int]:
        self._commit_transaction(revoking=True)
        return {}  # committed with the transaction (or aborted: re-read by the new owner)

    def lost(self) -> None:
        if self.open and not self.abandoned:  # its outputs are the new owners' to produce again
            self._abort("partitions lost", rewind=False)

    def abandon(self) -> None:
        """Never commit again; abort the open transaction."""
        super().abandon()
        if not self.open:
            return
        self._close()
        try:
            self.producer.abort_transaction(ABORT_ON_FAILURE_SECONDS)
        except TransportError as exc:
            logger.warning(
                "could not abort the open transaction (%s); the broker aborts it when this "
                "worker's successor starts, or after ANOMALY_TRANSACTION_TIMEOUT_SECONDS",
                exc,
            )

    def _commit_transaction(self, final: bool = False, revoking: bool = False) -> None:
        """Commit the open transaction with the processed offsets.

        An unreachable broker is waited for (``/readyz`` 503, capped backoff) up to the
        delivery timeout, or the shutdown timeout at shutdown and before partitions move;
        then the transaction is aborted and DeliveryError stops the worker (before a
        rebalance the abort alone is enough: the new owner re-reads). A transaction the
        broker refuses to commit (e.g. the group moved on) is aborted and re-read.
        """
        if self.abandoned:
            return
        offsets = self.offsets.to_commit()
        if not offsets and not self.open:
            return
        self._raise_delivery_failures()
        if not self.open:
            self.producer.begin_transaction()  # offsets alone: nothing was sent since the last
            self.open = True
        short = final or revoking
        bound = self.shutdown_timeout_seconds if short else self.delivery_timeout_seconds
        deadline = self.clock() + bound
        while True:
            if not short and self.stopping():
                deadline = min(deadline, self.clock() + self.shutdown_timeout_seconds)
            wait = min(max(deadline - self.clock(), 0.1), COMMIT_SLICE_SECONDS)
            try:
                self.producer.commit_transaction(offsets, self.consumer.group_metadata(), wait)
                break
            except TransactionAbortable as exc:
                self._abort(str(exc), rewind=not revoking)
                return
            except TransientError as exc:
                if self.clock() < deadline:
                    self.link.trouble(str(exc))
                    self.link.health.beat()
                    time.sleep(min(self.link.backoff_seconds, max(deadline - self.clock(), 0.0)))
                    continue
                if revoking:
                    self._abort(f"not committed within {bound:g}s: {exc}", False)
                    return
                self.abandon()
                raise DeliveryError(
                    f"the transaction did not commit within {bound:g}s ({exc}); "
                    "it is aborted and nothing past the last commit is committed"
                ) from exc
            except TransportError:
                self.abandon()
                raise
        self._close()
        self._aborts_in_a_row = 0
        self.metrics.transactions.labels(result="committed").inc()
        now = time.time()
        for event_ts in self._event_times:
            self.metrics.end_to_end_latency.observe(max(now - event_ts, 0.0))
        self._event_times.clear()
        self.committed(offsets)
        self.link.ok()

    def _close(self) -> None:
        self.open = False
        self.failures.end_epoch()  # deliveries failing from here on are the abort's doing

    def _abort(self, why: str, rewind: bool = True) -> None:
        """Abort the open transaction: nothing it sent becomes readable, its records are read
        again (``rewind``: here, from the last committed offsets; else by the partitions'
        next owner, as both clients revoke every partition at a rebalance)."""
        refused = self.failures.snapshot()  # outputs refused before the abort: the cause
        self._close()
        try:
            self.producer.abort_transaction(self.shutdown_timeout_seconds)
        except TransportError as exc:
            self.abandon()
            raise DeliveryError(f"the transaction could not be aborted ({exc})") from exc
        self.failures.restore(refused)
        self._event_times.clear()
        self.metrics.transactions.labels(result="aborted").inc()
        self._aborts_in_a_row += 1
        logger.warning("transaction aborted (its records are processed again): %s", why)
        self._raise_delivery_failures()
        if self._aborts_in_a_row >= MAX_ABORTS_IN_A_ROW:
            self.abandon()
            raise DeliveryError(f"{self._aborts_in_a_row} transactions aborted in a row: {why}")
        if rewind:  # the loop commits with no batch in hand: nothing polled is left behind
            for partition, offset in self.offsets.rewind().items():
                self.consumer.seek(partition, offset)

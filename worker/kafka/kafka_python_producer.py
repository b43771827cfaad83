"""The kafka-python driver's producer: idempotent, transactional with exactly_once."""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaProducer
from kafka.errors import (
    InvalidProducerEpochError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumberError,
    ProducerFencedError,
    UnknownProducerIdError,
)

from worker.contract.messages import Partition
from worker.kafka.kafka_python import client_config, connect, kafka_offsets, translate
from worker.kafka.options import (
    Connection,
    ProducerOptions,
    kafka_python_config,
    producer_choices,
)
from worker.kafka.ports import (
    OnDelivery,
    OutputTopicError,
    ProducerStateLost,
    TransactionAbortable,
    TransientError,
    TransportError,
    fenced_message,
)

__all__ = ["KafkaPythonProducer", "producer_config"]

logger = logging.getLogger(__name__)

#: How long a produce call may wait for room in the buffer or for topic metadata.
MAX_BLOCK_MS = 10_000
#: Delivery errors that mean the broker no longer knows this idempotent producer.
_STATE_LOST = (UnknownProducerIdError, OutOfOrderSequenceNumberError, InvalidProducerEpochError)


def producer_config(connection: Connection, options: ProducerOptions) -> dict[str, Any]:
    """The table's producer (idempotent, acks=all; transactional with exactly_once)."""
    return {
        **client_config(connection),
        **kafka_python_config(producer_choices(options)),
        "max_block_ms": MAX_BLOCK_MS,
        # The worker never creates topics: a missing output topic is an error at start.
        "allow_auto_create_topics": False,
    }


class KafkaPythonProducer:
    """Idempotent, acks=all (:func:`~worker.kafka.options.producer_choices`); transactional
    with exactly_once.

    The transaction calls wait through kafka-python's transaction manager, whose results
    take a timeout (the public ``commit_transaction`` and ``send_offsets_to_transaction``
    wait forever). A commit that times out is resumed, not started again.
    """

    def __init__(self, connection: Connection, options: ProducerOptions) -> None:
        self._transactional_id = options.transactional_id or ""
        self._make = lambda: self._create(connection, options)
        self._producer: KafkaProducer = connect(self._make)
        self._adding_offsets: Any = None  # the pending results of a commit in progress
        self._ending: Any = None

    def _create(self, connection: Connection, options: ProducerOptions) -> KafkaProducer:
        producer = KafkaProducer(**producer_config(connection, options))
        if options.transactional_id is not None:
            try:
                # Fences any earlier producer with this id and aborts what it left open.
                producer.init_transactions()
            except KafkaError as exc:
                producer.close(timeout=0)
                if isinstance(exc, KafkaTimeoutError | KafkaConnectionError):
                    raise
                raise self._transaction_error(exc, "init_transactions") from exc
        return producer

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        on_delivery: OnDelivery,
    ) -> None:
        try:
            future = self._producer.send(topic, key=key, value=value, headers=headers)
        except KafkaError as exc:
            raise translate(exc, "send") from exc
        future.add_callback(lambda _metadata: on_delivery(None))
        future.add_errback(lambda exc: on_delivery(self._delivery_error(exc)))

    def _delivery_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, ProducerFencedError):
            return TransportError(fenced_message(self._transactional_id, repr(exc)))
        if not self._transactional_id and (isinstance(exc, _STATE_LOST) or self._failed()):
            # Lost by the broker, or the client gave up on it (it cannot get a new producer
            # id: "Aborting producer batches due to fatal error"): only a new producer sends.
            return ProducerStateLost(f"delivery: {type(exc).__name__}: {exc}")
        return exc

    def _failed(self) -> bool:
        manager = getattr(self._producer, "_transaction_manager", None)
        return manager is not None and manager.has_fatal_error()

    def renew(self) -> None:
        old, self._producer = self._producer, connect(self._make)
        try:
            old.close(timeout=0)
        except KafkaError as exc:
            logger.warning("closing the replaced producer: %s: %s", type(exc).__name__, exc)

    def flush(self, timeout: float) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise translate(exc, "flush") from exc

    def check_topic(self, topic: str) -> None:
        try:
            partitions = self._producer.partitions_for(topic)
        except KafkaError as exc:
            raise OutputTopicError(
                f"output topic {topic!r} is missing or not writable "
                f"({type(exc).__name__}: {exc}); create it or grant Write on it"
            ) from exc
        if not partitions:
            raise OutputTopicError(f"output topic {topic!r} has no partitions; create it")

    def close(self, timeout: float) -> None:
        """Never raises: a close after a fault must not hide the fault."""
        try:
            self._producer.close(timeout=timeout)
        except KafkaError as exc:
            logger.warning("producer close: %s: %s", type(exc).__name__, exc)

    # --- transactions -----------------------------------------------------------------
    def begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaError as exc:
            raise self._transaction_error(exc, "begin_transaction") from exc

    def commit_transaction(
        self, offsets: dict[Partition, int], group: object, timeout: float
    ) -> None:
        manager, sender = self._producer._transaction_manager, self._producer._sender
        deadline = time.monotonic() + timeout
        try:
            if self._adding_offsets is None:
                self._adding_offsets = manager.send_offsets_to_transaction(
                    kafka_offsets(offsets), group
                )
                sender.wakeup()
            self._wait(self._adding_offsets, deadline, "adding the offsets to the transaction")
            if self._ending is None:
                self._ending = manager.begin_commit()
                sender.wakeup()
            self._wait(self._ending, deadline, "committing the transaction")
        except KafkaError as exc:
            self._adding_offsets = self._ending = None
            raise self._transaction_error(exc, "commit_transaction") from exc
        self._adding_offsets = self._ending = None

    def abort_transaction(self, timeout: float) -> None:
        manager, sender = self._producer._transaction_manager, self._producer._sender
        self._adding_offsets = self._ending = None
        try:
            result = manager.begin_abort()
            sender.wakeup()
            self._wait(result, time.monotonic() + timeout, "aborting the transaction")
        except KafkaError as exc:
            raise self._transaction_error(exc, "abort_transaction") from exc

    @staticmethod
    def _wait(result: Any, deadline: float, what: str) -> None:
        """Wait for a transaction manager result (its error raises); TransientError if late."""
        if not result.wait(timeout_ms=max(deadline - time.monotonic(), 0.0) * 1000):
            raise TransientError(f"{what}: no answer from the transaction coordinator yet")

    def _transaction_error(self, exc: KafkaError, what: str) -> TransportError:
        manager = self._producer._transaction_manager if hasattr(self, "_producer") else None
        if isinstance(exc, ProducerFencedError) or "Fenced" in type(exc).__name__:
            return TransportError(fenced_message(self._transactional_id, f"{what}: {exc}"))
        if manager is not None and manager.has_abortable_error():
            return TransactionAbortable(f"{what}: {type(exc).__name__}: {exc}")
        return translate(exc, what)

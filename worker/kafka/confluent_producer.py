"""The librdkafka driver's producer: idempotent, transactional with exactly_once."""

from __future__ import annotations

import logging
import time
from typing import Any

import confluent_kafka as ck  # the [confluent] extra; settings refuse this client without it

from worker.contract.messages import Partition
from worker.kafka.confluent import METADATA_TIMEOUT_SECONDS, client_config, metadata, translate
from worker.kafka.options import (
    Connection,
    ProducerOptions,
    librdkafka_config,
    producer_choices,
)
from worker.kafka.ports import (
    BrokerUnreachable,
    OnDelivery,
    OutputTopicError,
    ProducerStateLost,
    TransactionAbortable,
    TransientError,
    TransportError,
    fenced_message,
)

__all__ = ["ConfluentProducer", "producer_config"]

logger = logging.getLogger(__name__)

#: How long a produce call may wait for room in librdkafka's queue.
MAX_BLOCK_SECONDS = 10.0
#: Delivery errors that mean the broker no longer knows this idempotent producer.
_STATE_LOST = {ck.KafkaError.UNKNOWN_PRODUCER_ID, ck.KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER}


def producer_config(connection: Connection, options: ProducerOptions) -> dict[str, Any]:
    """The table's producer (idempotent, acks=all; transactional with exactly_once)."""
    return {**client_config(connection), **librdkafka_config(producer_choices(options))}


class ConfluentProducer:
    """Idempotent, acks=all (:func:`~worker.kafka.options.producer_choices`); transactional
    with exactly_once."""

    def __init__(self, connection: Connection, options: ProducerOptions) -> None:
        self._fatal: str | None = None
        self._transactional_id = options.transactional_id or ""
        self._offsets_added = False  # a commit in progress has added its offsets already
        self._lost: str | None = None  # what said the broker forgot this producer
        self._config = {
            **producer_config(connection, options),
            "error_cb": self._on_error,
            "logger": logger,
        }
        if options.transactional_id is None:
            # librdkafka bumps the epoch of a producer id the broker does not know and retries,
            # forever where the broker has forgotten it (restarted empty): until each output's
            # delivery timeout, with nothing reported but its idempotence log lines.
            self._config.update(debug="eos", logger=_IdempotenceLog(self))
        self._producer = ck.Producer(self._config)
        metadata(self._producer)
        if options.transactional_id is not None:
            try:
                # Fences any earlier producer with this id and aborts what it left open.
                self._producer.init_transactions(METADATA_TIMEOUT_SECONDS)
            except ck.KafkaException as exc:
                err = exc.args[0]
                if err.retriable():
                    raise BrokerUnreachable(f"init_transactions: {err.str()}") from exc
                raise self._transaction_error(err, "init_transactions") from exc

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._fatal = f"{err.name()}: {err.str()}"
            logger.error("producer: fatal librdkafka error: %s", self._fatal)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        on_delivery: OnDelivery,
    ) -> None:
        def delivered(err: Any, _message: Any) -> None:
            on_delivery(None if err is None else self._classify(err, "delivery"))

        deadline = time.monotonic() + MAX_BLOCK_SECONDS
        while True:
            try:
                self._producer.produce(
                    topic,
                    value=value,
                    key=key,
                    headers=headers,  # type: ignore[arg-type]
                    on_delivery=delivered,
                )
                break
            except BufferError as exc:  # the local queue is full: wait for deliveries
                if time.monotonic() > deadline:
                    raise TransientError(f"send: the producer queue stayed full: {exc}") from exc
                self._producer.poll(0.05)
            except ck.KafkaException as exc:
                raise translate(exc.args[0], "send") from exc
        self._producer.poll(0)  # serve delivery callbacks

    def flush(self, timeout: float) -> None:
        remaining = self._producer.flush(timeout)
        if remaining and self._lost is not None:
            raise ProducerStateLost(f"flush: {remaining} output(s) stuck: {self._lost}")
        if not remaining:
            self._lost = None  # the broker took the new epoch (KIP-360): nothing was lost
        if self._fatal is not None:
            raise TransportError(f"flush: {self._fatal}")
        if remaining:
            raise TransientError(f"flush: {remaining} output(s) not acknowledged in {timeout:.0f}s")

    def check_topic(self, topic: str) -> None:
        found = metadata(self._producer, topic).topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            why = found.error.str() if found is not None and found.error else "no partitions"
            raise OutputTopicError(
                f"output topic {topic!r} is missing or not writable ({why}); "
                "create it or grant Write on it"
            )

    def close(self, timeout: float) -> None:
        """Never raises: a close after a fault must not hide the fault."""
        try:
            remaining = self._producer.flush(timeout)
        except Exception as exc:  # a fatal error (e.g. fenced) surfaces from flush
            logger.warning("producer close: %s", exc)
            return
        if remaining:
            logger.warning("producer close: %d output(s) still unacknowledged", remaining)

    # --- transactions -----------------------------------------------------------------
    def begin_transaction(self) -> None:
        try:
            self._producer.begin_transaction()
        except ck.KafkaException as exc:
            raise self._transaction_error(exc.args[0], "begin_transaction") from exc

    def commit_transaction(
        self, offsets: dict[Partition, int], group: object, timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        try:
            if not self._offsets_added:
                self._producer.send_offsets_to_transaction(
                    [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                    group,
                    max(deadline - time.monotonic(), 0.0),
                )
                self._offsets_added = True
            self._producer.commit_transaction(max(deadline - time.monotonic(), 0.0))
        except ck.KafkaException as exc:
            raise self._transaction_error(exc.args[0], "commit_transaction") from exc
        self._offsets_added = False

    def abort_transaction(self, timeout: float) -> None:
        self._offsets_added = False
        try:
            self._producer.abort_transaction(timeout)
        except ck.KafkaException as exc:
            raise self._transaction_error(exc.args[0], "abort_transaction") from exc

    def _transaction_error(self, err: Any, what: str) -> TransportError:
        error = self._classify(err, what)
        if not isinstance(error, TransientError):
            self._offsets_added = False  # a retry (TransientError) resumes the same step
        return error

    def renew(self) -> None:
        old, self._fatal, self._lost = self._producer, None, None
        self._producer = ck.Producer(self._config)
        old.purge()  # what was in flight is lost with the producer's state
        old.flush(0)

    def _classify(self, err: Any, what: str) -> TransportError:
        text = f"{what}: {err.name()}: {err.str()}"
        if err.code() in (ck.KafkaError._FENCED, ck.KafkaError.PRODUCER_FENCED):
            return TransportError(fenced_message(self._transactional_id, text))
        if err.code() in _STATE_LOST and not self._transactional_id:
            return ProducerStateLost(text)
        if err.txn_requires_abort():
            return TransactionAbortable(text)
        if err.retriable() and not err.fatal():
            return TransientError(text)
        return TransportError(text)


class _IdempotenceLog:
    """librdkafka's log for a non-transactional producer: forwards every line to the module's
    logger, and notes the one that says the broker does not know the producer id."""

    def __init__(self, producer: ConfluentProducer) -> None:
        self.producer = producer

    def log(self, level: int, message: str, *args: Any) -> None:
        text = message % args if args else message
        if "UNKPID" in text and "unknown producer id" in text:
            self.producer._lost = text.split("]: ", 2)[-1][:200]
        logger.log(level, message, *args)

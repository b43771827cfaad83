"""The librdkafka transport (``ANOMALY_KAFKA_CLIENT=confluent``), through confluent-kafka.

librdkafka fetches and decodes record batches in C on its own threads; the
worker's main thread only takes ready records off its queue. Rebalance, error,
statistics and delivery callbacks run inside ``consume``/``poll``/``flush`` on
the calling (main) thread, so the rebalance hooks may block and commit
synchronously.

Install with ``pip install 'anomaly-worker[confluent]'``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import confluent_kafka as ck  # the [confluent] extra; settings refuse this client without it

from worker.exceptions import OutputTopicError
from worker.messages import Message, SourceMessage
from worker.offsets import Partition
from worker.settings import WorkerSettings
from worker.transport import (
    MAX_PARTITION_FETCH_BYTES,
    BrokerUnreachable,
    Chunk,
    CommitRejected,
    OnDelivery,
    RebalanceHooks,
    TransactionAbortable,
    TransientError,
    TransportError,
    UndecodableError,
    fenced_message,
    max_poll_interval_seconds,
    request_timeout_seconds,
)

__all__ = ["ConfluentConsumer", "ConfluentProducer", "consumer_config", "producer_config"]

logger = logging.getLogger(__name__)

#: How long start-up waits for the cluster's metadata before calling the broker unreachable.
METADATA_TIMEOUT_SECONDS = 5.0
#: How often librdkafka reports its statistics (the group link's health is read from them).
STATISTICS_INTERVAL_MS = 1000
#: How long a produce call may wait for room in librdkafka's queue.
MAX_BLOCK_SECONDS = 10.0
#: Errors that mean a batch cannot be decoded.
_UNDECODABLE = {ck.KafkaError._BAD_MSG, ck.KafkaError._BAD_COMPRESSION}
_VALUE, _ERROR = ck.Message.value, ck.Message.error
#: Commit errors that mean the group moved on without us.
_REJECTED = {
    ck.KafkaError.ILLEGAL_GENERATION,
    ck.KafkaError.UNKNOWN_MEMBER_ID,
    ck.KafkaError.REBALANCE_IN_PROGRESS,
    ck.KafkaError._ASSIGNMENT_LOST,
    ck.KafkaError._STATE,
}


def client_config(settings: WorkerSettings) -> dict[str, Any]:
    """librdkafka's names for the connection and security settings."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": f"anomaly-worker-{settings.group_id}",
        "security.protocol": settings.security_protocol.lower(),
        "reconnect.backoff.max.ms": int(settings.connect_backoff_max_seconds * 1000),
        "socket.connection.setup.timeout.ms": 5000,
    }
    if settings.sasl_mechanism is not None:
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username
        if settings.sasl_password is not None:
            config["sasl.password"] = settings.sasl_password.get_secret_value()
    for ours, theirs in (
        ("ssl_cafile", "ssl.ca.location"),
        ("ssl_certfile", "ssl.certificate.location"),
        ("ssl_keyfile", "ssl.key.location"),
    ):
        value = getattr(settings, ours)
        if value is not None:
            config[theirs] = str(value)
    return config


def consumer_config(settings: WorkerSettings) -> dict[str, Any]:
    return {
        **client_config(settings),
        "group.id": settings.group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "isolation.level": settings.isolation_level,
        "check.crcs": True,
        "session.timeout.ms": int(settings.session_timeout_seconds * 1000),
        "heartbeat.interval.ms": int(settings.heartbeat_interval_seconds * 1000),
        "max.poll.interval.ms": int(
            max_poll_interval_seconds(settings.session_timeout_seconds) * 1000
        ),
        "fetch.wait.max.ms": int(settings.fetch_max_wait_seconds * 1000),
        "max.partition.fetch.bytes": MAX_PARTITION_FETCH_BYTES,
        "statistics.interval.ms": STATISTICS_INTERVAL_MS,
        "allow.auto.create.topics": False,
    }


def producer_config(settings: WorkerSettings) -> dict[str, Any]:
    """Idempotent, acks=all: the producer's own retries never duplicate an output.

    With exactly_once it is transactional, its id :attr:`WorkerSettings.effective_transactional_id`.
    """
    delivery_timeout = settings.effective_delivery_timeout_seconds
    transactions: dict[str, Any] = {}
    if settings.exactly_once:
        transactions = {
            "transactional.id": settings.effective_transactional_id,
            "transaction.timeout.ms": int(settings.transaction_timeout_seconds * 1000),
        }
    return {
        **client_config(settings),
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": settings.linger_seconds * 1000,
        "batch.size": 256 * 1024,
        "compression.type": settings.output_compression,
        "message.max.bytes": settings.max_request_bytes,
        "delivery.timeout.ms": int(delivery_timeout * 1000),
        "request.timeout.ms": int(request_timeout_seconds(delivery_timeout) * 1000),
        **transactions,
    }


def _partition(tp: Any) -> Partition:
    return (tp.topic, tp.partition)


def _error(err: Any, what: str) -> TransportError:
    """A librdkafka error in the worker's terms."""
    text = f"{what}: {err.name()}: {err.str()}"
    if err.code() in _REJECTED:
        return CommitRejected(text)
    if err.fatal() or not (err.retriable() or err.code() < 0):
        return TransportError(text)
    return TransientError(text)  # librdkafka's local errors (negative codes) are retried by it


def _metadata(client: Any, topic: str | None = None) -> Any:
    """Cluster metadata; BrokerUnreachable when no broker answers in time."""
    try:
        return client.list_topics(topic, timeout=METADATA_TIMEOUT_SECONDS)
    except ck.KafkaException as exc:
        raise BrokerUnreachable(
            f"no metadata within {METADATA_TIMEOUT_SECONDS:.0f}s: {exc}"
        ) from exc


class ConfluentConsumer:
    """The group consumer. Its callbacks all run inside :meth:`poll` on the main thread."""

    def __init__(self, settings: WorkerSettings, commit_timeout: float) -> None:
        self._settings = settings
        self._commit_timeout = commit_timeout
        self._group_up_at: float | None = None
        self._consumer = ck.Consumer(
            {
                **consumer_config(settings),
                "stats_cb": self._on_stats,
                "error_cb": self._on_error,
                "logger": logger,
            }
        )
        try:
            _metadata(self._consumer)
        except BrokerUnreachable:
            self._consumer.close()
            raise
        self._hooks: RebalanceHooks | None = None
        self._held: TransportError | None = None
        self._probe: Any = None

    # --- callbacks (main thread, inside consume) ----------------------------------------
    def _on_stats(self, raw: str) -> None:
        stats = json.loads(raw)
        group = stats.get("cgrp") or {}
        brokers = stats.get("brokers") or {}
        up = any(b.get("state") == "UP" and b.get("nodeid", -1) >= 0 for b in brokers.values())
        if up and group.get("state") == "up":
            self._group_up_at = time.monotonic()

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self._held = self._held or TransportError(f"{err.name()}: {err.str()}")
        else:
            logger.debug("librdkafka: %s", err)

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        assert self._hooks is not None
        self._hooks.on_assigned({_partition(tp) for tp in partitions})

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        assert self._hooks is not None
        offsets = self._hooks.prepare_revoke()
        if offsets:
            try:
                self.commit(offsets, self._commit_timeout)
            except TransportError as exc:  # the new owner re-reads from the last commit
                logger.warning("commit before the rebalance failed (outputs may repeat): %s", exc)
            else:
                self._hooks.committed(offsets)
        self._hooks.revoked({_partition(tp) for tp in partitions})

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        assert self._hooks is not None
        self._hooks.lost({_partition(tp) for tp in partitions})

    # --- the transport --------------------------------------------------------------------
    def subscribe(self, topic: str, hooks: RebalanceHooks) -> None:
        self._hooks = hooks
        self._consumer.subscribe(
            [topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def poll(self, timeout: float, max_records: int) -> Chunk | None:
        if self._held is not None:
            held, self._held = self._held, None
            raise held
        try:
            # consume() waits for all max_records or the whole timeout; poll() returns the
            # first record as soon as it arrives, and the rest already there come with it.
            messages = self._consumer.consume(max_records, 0)
            if not messages and timeout > 0:
                first = self._consumer.poll(timeout)
                if first is None:
                    return None
                messages = [first]
                if max_records > 1:
                    messages.extend(self._consumer.consume(max_records - 1, 0))
        except ck.KafkaException as exc:
            raise _error(exc.args[0], "poll") from exc
        if not messages:
            return None
        values = list(map(_VALUE, messages))
        if any(map(_ERROR, messages)):  # an error event among the records
            messages, values = self._take_errors(messages, values)
            if not messages:
                return None
        # The last offset per partition: later entries overwrite earlier ones.
        last: dict[Partition, int] = {(m.topic(), m.partition()): m.offset() for m in messages}  # type: ignore[misc]
        return Chunk(messages, values, last)

    def _take_errors(self, messages: list[Any], values: list[Any]) -> tuple[list[Any], list[Any]]:
        """Split error events from records; the first error is raised by the next poll.

        Records of the failing partition after its error are dropped (they are read
        again): nothing past a batch that could not be decoded is processed.
        """
        kept, kept_values = [], []
        stuck: Partition | None = None
        for message, value in zip(messages, values, strict=True):
            err = message.error()
            if err is None:
                if stuck is None or (message.topic(), message.partition()) != stuck:
                    kept.append(message)
                    kept_values.append(value)
                continue
            if err.code() == ck.KafkaError._PARTITION_EOF or self._held is not None:
                continue
            if err.code() in _UNDECODABLE and message.topic() is not None:
                stuck = (message.topic(), message.partition())
                self._held = UndecodableError(
                    f"{err.name()}: {err.str()}", stuck, int(message.offset())
                )
            else:
                self._held = _error(err, "poll")
        return kept, kept_values

    def source(self, message: Any) -> SourceMessage:
        return Message(
            message.topic(),
            message.partition(),
            message.offset(),
            message.timestamp()[1],
            message.key(),
            message.value(),
        )

    def commit(self, offsets: dict[Partition, int], timeout: float) -> None:
        del timeout  # librdkafka bounds a synchronous commit by its own request timeout
        tps = [ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            results = self._consumer.commit(offsets=tps, asynchronous=False)
        except ck.KafkaException as exc:
            raise _error(exc.args[0], "commit") from exc
        for tp in results or []:
            if tp.error is not None:
                raise _error(tp.error, "commit")

    def assignment(self) -> set[Partition]:
        return {_partition(tp) for tp in self._consumer.assignment()}

    def position(self, partition: Partition) -> int:
        (tp,) = self._consumer.position([ck.TopicPartition(*partition)])
        return int(tp.offset)

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(ck.TopicPartition(*partition, offset))

    def highwater(self, partition: Partition) -> int | None:
        _low, high = self._consumer.get_watermark_offsets(
            ck.TopicPartition(*partition), cached=True
        )
        return int(high) if high >= 0 else None

    def link_age(self) -> float | None:
        """Seconds since librdkafka last reported the group up with a broker connected."""
        if self._group_up_at is None:
            return None
        return time.monotonic() - self._group_up_at

    def group_metadata(self) -> object:
        return self._consumer.consumer_group_metadata()

    def probe_fails(self, partition: Partition, offset: int, timeout: float) -> bool:
        if self._probe is None:
            config = consumer_config(self._settings)
            # A throw-away group id that never joins (assign, not subscribe) nor commits.
            config["group.id"] = f"{self._settings.group_id}-probe-{uuid.uuid4().hex[:8]}"
            config.pop("statistics.interval.ms")
            self._probe = ck.Consumer({**config, "logger": logger})
        self._probe.assign([ck.TopicPartition(*partition, offset)])
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                message = self._probe.poll(0.2)
                if message is None:
                    continue
                err = message.error()
                if err is None:
                    return False
                if err.code() in _UNDECODABLE:
                    return True
            return False
        finally:
            self._probe.unassign()

    def close(self) -> None:
        try:
            if self._probe is not None:
                self._probe.close()
            self._consumer.close()
        except (ck.KafkaException, RuntimeError) as exc:
            logger.warning("consumer close: %s", exc)


class ConfluentProducer:
    """Idempotent, acks=all (see :func:`producer_config`); transactional with exactly_once."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._fatal: str | None = None
        self._transactional_id = settings.effective_transactional_id
        self._offsets_added = False  # a commit in progress has added its offsets already
        self._producer = ck.Producer(
            {**producer_config(settings), "error_cb": self._on_error, "logger": logger}
        )
        _metadata(self._producer)
        if settings.exactly_once:
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
                raise _error(exc.args[0], "send") from exc
        self._producer.poll(0)  # serve delivery callbacks

    def flush(self, timeout: float) -> None:
        remaining = self._producer.flush(timeout)
        if self._fatal is not None:
            raise TransportError(f"flush: {self._fatal}")
        if remaining:
            raise TransientError(f"flush: {remaining} output(s) not acknowledged in {timeout:.0f}s")

    def check_topic(self, topic: str) -> None:
        metadata = _metadata(self._producer, topic)
        found = metadata.topics.get(topic)
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

    def _classify(self, err: Any, what: str) -> TransportError:
        text = f"{what}: {err.name()}: {err.str()}"
        if err.code() in (ck.KafkaError._FENCED, ck.KafkaError.PRODUCER_FENCED):
            return TransportError(fenced_message(self._transactional_id, text))
        if err.txn_requires_abort():
            return TransactionAbortable(text)
        if err.retriable() and not err.fatal():
            return TransientError(text)
        return TransportError(text)

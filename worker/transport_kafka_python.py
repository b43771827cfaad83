"""The kafka-python transport (``ANOMALY_KAFKA_CLIENT=kafka-python``, the default).

Settings map to kafka-python's options here; its records, errors and rebalance
callbacks are translated into :mod:`worker.transport`'s terms.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    CommitFailedError,
    CorruptRecordError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFencedError,
    UnsupportedCodecError,
)
from kafka.structs import OffsetAndMetadata

from worker.exceptions import OutputTopicError
from worker.messages import SourceMessage
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

__all__ = [
    "KafkaPythonConsumer",
    "KafkaPythonProducer",
    "client_config",
    "consumer_config",
    "producer_config",
]

logger = logging.getLogger(__name__)

BOOTSTRAP_TIMEOUT_MS = 5000
#: How long a produce call may wait for room in the buffer or for topic metadata.
MAX_BLOCK_MS = 10_000
#: Where kafka-python's checksum errors say the batch is.
_BATCH_AT = re.compile(
    r"partition TopicPartition\(topic='(?P<topic>[^']+)', partition=(?P<partition>\d+)\)"
    r" at offset (?P<offset>\d+)"
)


def client_config(settings: WorkerSettings) -> dict[str, Any]:
    """Connection and security options shared by every client."""
    config: dict[str, Any] = {
        "bootstrap_servers": [
            s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()
        ],
        "client_id": f"anomaly-worker-{settings.group_id}",
        "security_protocol": settings.security_protocol,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
        # After an outage, reconnect within the worker's own backoff bound (the client's
        # default waits up to 30 s).
        "reconnect_backoff_max_ms": int(settings.connect_backoff_max_seconds * 1000),
    }
    if settings.sasl_mechanism is not None:
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            config["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, name)
        if value is not None:
            config[name] = str(value)
    return config


def consumer_config(settings: WorkerSettings) -> dict[str, Any]:
    return {
        **client_config(settings),
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "isolation_level": settings.isolation_level,
        "check_crcs": True,
        "session_timeout_ms": int(settings.session_timeout_seconds * 1000),
        "heartbeat_interval_ms": int(settings.heartbeat_interval_seconds * 1000),
        "max_poll_interval_ms": int(
            max_poll_interval_seconds(settings.session_timeout_seconds) * 1000
        ),
        "fetch_max_wait_ms": int(settings.fetch_max_wait_seconds * 1000),
        "max_partition_fetch_bytes": MAX_PARTITION_FETCH_BYTES,
        "max_poll_records": settings.batch_max_records,
    }


def producer_config(settings: WorkerSettings) -> dict[str, Any]:
    """Idempotent, acks=all: the producer's own retries never duplicate an output.

    With exactly_once it is transactional, its id :attr:`WorkerSettings.effective_transactional_id`.
    """
    compression = settings.output_compression
    delivery_timeout = settings.effective_delivery_timeout_seconds
    transactions: dict[str, Any] = {}
    if settings.exactly_once:
        transactions = {
            "transactional_id": settings.effective_transactional_id,
            "transaction_timeout_ms": int(settings.transaction_timeout_seconds * 1000),
        }
    return {
        **client_config(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": int(settings.linger_seconds * 1000),
        "batch_size": 256 * 1024,
        "compression_type": None if compression == "none" else compression,
        "max_request_size": settings.max_request_bytes,
        "delivery_timeout_ms": int(delivery_timeout * 1000),
        "request_timeout_ms": int(request_timeout_seconds(delivery_timeout) * 1000),
        "max_block_ms": MAX_BLOCK_MS,
        # The worker never creates topics: a missing output topic is an error at start.
        "allow_auto_create_topics": False,
        **transactions,
    }


def _tp(partition: Partition) -> TopicPartition:
    return TopicPartition(*partition)


def _translate(exc: KafkaError, what: str) -> TransportError:
    if isinstance(exc, CommitFailedError):
        return CommitRejected(f"{what}: {exc}")
    if isinstance(exc, CorruptRecordError | UnsupportedCodecError):
        named = _BATCH_AT.search(str(exc))
        located = (named["topic"], int(named["partition"])) if named else None
        return UndecodableError(
            f"{type(exc).__name__}: {exc}", located, int(named["offset"]) if named else None
        )
    kind = TransientError if getattr(exc, "retriable", False) else TransportError
    return kind(f"{what}: {type(exc).__name__}: {exc}")


def _connect(factory: Callable[[], Any]) -> Any:
    try:
        return factory()
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        raise BrokerUnreachable(str(exc)) from exc


class KafkaPythonConsumer:
    """The group consumer; rebalance callbacks run on kafka-python's IO thread."""

    def __init__(self, settings: WorkerSettings, commit_timeout: float) -> None:
        self._settings = settings
        self._commit_timeout_ms = int(commit_timeout * 1000)
        self._consumer: KafkaConsumer = _connect(lambda: KafkaConsumer(**consumer_config(settings)))
        self._probe: KafkaConsumer | None = None

    def subscribe(self, topic: str, hooks: RebalanceHooks) -> None:
        self._consumer.subscribe(
            [topic], listener=_Listener(hooks, self._consumer, self._commit_timeout_ms)
        )

    def poll(self, timeout: float, max_records: int) -> Chunk | None:
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except KafkaError as exc:
            raise _translate(exc, "poll") from exc
        if not polled:
            return None
        messages: list[Any] = []
        last: dict[Partition, int] = {}
        for tp, records in polled.items():
            messages.extend(records)
            last[(tp.topic, tp.partition)] = records[-1].offset
        return Chunk(messages, [r.value for r in messages], last)

    def source(self, message: Any) -> SourceMessage:
        return message  # kafka-python's ConsumerRecord has every field a SourceMessage has

    def commit(self, offsets: dict[Partition, int], timeout: float) -> None:
        try:
            self._consumer.commit(kafka_offsets(offsets), timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            raise _translate(exc, "commit") from exc

    def assignment(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def position(self, partition: Partition) -> int:
        return int(self._consumer.position(_tp(partition)))

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(_tp(partition), offset)

    def highwater(self, partition: Partition) -> int | None:
        high = self._consumer.highwater(_tp(partition))
        return None if high is None else int(high)

    def link_age(self) -> float | None:
        """Seconds since the group coordinator last answered a heartbeat (None if unknown).

        Reads kafka-python's heartbeat bookkeeping: the client exposes no public
        "connected" signal, and a poll during a network cut may simply come back empty.
        """
        coordinator = getattr(self._consumer, "_coordinator", None)
        heartbeat = getattr(coordinator, "heartbeat", None)
        if heartbeat is None:
            return None
        return time.monotonic() - max(heartbeat.last_receive, heartbeat.last_reset)

    def group_metadata(self) -> object:
        return self._consumer.group_metadata()

    def probe_fails(self, partition: Partition, offset: int, timeout: float) -> bool:
        if self._probe is None:
            # Outside the group (no group id), to read one partition at chosen offsets.
            config = consumer_config(self._settings)
            for name in (
                "group_id",
                "session_timeout_ms",
                "heartbeat_interval_ms",
                "auto_offset_reset",
            ):
                config.pop(name)
            self._probe = KafkaConsumer(**config)
        tp = _tp(partition)
        self._probe.assign([tp])
        self._probe.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self._probe.poll(timeout_ms=200, max_records=1):
                    return False
            except (CorruptRecordError, UnsupportedCodecError):
                return True
        return False

    def close(self) -> None:
        try:
            if self._probe is not None:
                self._probe.close()
            self._consumer.close(autocommit=False)
        except KafkaError as exc:
            logger.warning("consumer close: %s: %s", type(exc).__name__, exc)


class _Listener(AsyncConsumerRebalanceListener):
    """Commit what was processed before partitions move, without blocking the client's IO thread.

    kafka-python 3 runs rebalance listeners on its IO thread (during ``poll``
    and ``close``), where a blocking ``consumer.commit`` raises "Cannot block on
    net.run() from the IO thread itself". The async listener awaits the
    coordinator's commit coroutine instead, so heartbeats keep flowing. (That
    coroutine is the one ``KafkaConsumer.commit`` runs; kafka-python has no
    public awaitable commit.)
    """

    def __init__(self, hooks: RebalanceHooks, consumer: Any, timeout_ms: int) -> None:
        self.hooks, self.consumer, self.timeout_ms = hooks, consumer, timeout_ms

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        offsets = self.hooks.prepare_revoke()
        if offsets:
            coordinator = self.consumer._coordinator
            try:
                await coordinator._commit_offsets_sync_async(
                    kafka_offsets(offsets), timeout_ms=self.timeout_ms
                )
            except Exception as exc:  # the new owner re-reads from the last commit
                logger.warning("commit before the rebalance failed (outputs may repeat): %r", exc)
            else:
                self.hooks.committed(offsets)
        self.hooks.revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.hooks.on_assigned({(tp.topic, tp.partition) for tp in assigned})

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.hooks.lost({(tp.topic, tp.partition) for tp in lost})


class KafkaPythonProducer:
    """Idempotent, acks=all (see :func:`producer_config`); transactional with exactly_once.

    The transaction calls wait through kafka-python's transaction manager, whose results
    take a timeout (the public ``commit_transaction`` and ``send_offsets_to_transaction``
    wait forever). A commit that times out is resumed, not started again.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self._transactional_id = settings.effective_transactional_id
        self._producer: KafkaProducer = _connect(lambda: self._create(settings))
        self._adding_offsets: Any = None  # the pending results of a commit in progress
        self._ending: Any = None

    def _create(self, settings: WorkerSettings) -> KafkaProducer:
        producer = KafkaProducer(**producer_config(settings))
        if settings.exactly_once:
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
            raise _translate(exc, "send") from exc
        future.add_callback(lambda _metadata: on_delivery(None))
        future.add_errback(lambda exc: on_delivery(self._delivery_error(exc)))

    def _delivery_error(self, exc: BaseException) -> BaseException:
        if isinstance(exc, ProducerFencedError):
            return TransportError(fenced_message(self._transactional_id, repr(exc)))
        return exc

    def flush(self, timeout: float) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise _translate(exc, "flush") from exc

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
        return _translate(exc, what)


def kafka_offsets(offsets: dict[Partition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}

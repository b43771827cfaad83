"""The kafka-python driver (``ANOMALY_KAFKA_CLIENT=kafka-python``, the default): its consumer.

The option table of :mod:`worker.kafka.options` is spelled for kafka-python here; its
records, errors and rebalance callbacks are translated into :mod:`worker.kafka.ports`' terms.
The producer is :mod:`worker.kafka.kafka_python_producer`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.errors import (
    CommitFailedError,
    CorruptRecordError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    UnsupportedCodecError,
)
from kafka.structs import OffsetAndMetadata

from worker.contract.messages import Partition, SourceMessage
from worker.kafka.options import (
    Connection,
    ConsumerOptions,
    connection_choices,
    consumer_choices,
    kafka_python_config,
)
from worker.kafka.ports import (
    BrokerUnreachable,
    Chunk,
    CommitRejected,
    RebalanceHooks,
    TransientError,
    TransportError,
    UndecodableError,
    commit_on_revoke,
)

__all__ = ["KafkaPythonConsumer", "client_config", "consumer_config", "kafka_offsets", "translate"]

logger = logging.getLogger(__name__)

BOOTSTRAP_TIMEOUT_MS = 5000
#: Where kafka-python's checksum errors say the batch is.
_BATCH_AT = re.compile(
    r"partition TopicPartition\(topic='(?P<topic>[^']+)', partition=(?P<partition>\d+)\)"
    r" at offset (?P<offset>\d+)"
)


def client_config(connection: Connection) -> dict[str, Any]:
    """Connection and security options shared by every client."""
    return {
        **kafka_python_config(connection_choices(connection)),
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
    }


#: How old the consumer's metadata may get: a recreated input topic shows as a new topic id
#: in it (the client's default is 5 minutes).
METADATA_MAX_AGE_MS = 30_000


def consumer_config(connection: Connection, options: ConsumerOptions) -> dict[str, Any]:
    return {
        **client_config(connection),
        **kafka_python_config(consumer_choices(options)),
        "max_poll_records": options.batch_max_records,
        "metadata_max_age_ms": METADATA_MAX_AGE_MS,
    }


def _tp(partition: Partition) -> TopicPartition:
    return TopicPartition(*partition)


def translate(exc: KafkaError, what: str) -> TransportError:
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


def connect(factory: Callable[[], Any]) -> Any:
    try:
        return factory()
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        raise BrokerUnreachable(str(exc)) from exc


class KafkaPythonConsumer:
    """The group consumer; rebalance callbacks run on kafka-python's IO thread."""

    def __init__(self, connection: Connection, options: ConsumerOptions) -> None:
        self._config = consumer_config(connection, options)
        self._commit_timeout_ms = int(options.shutdown_timeout_seconds * 1000)
        self._consumer: KafkaConsumer = connect(lambda: KafkaConsumer(**self._config))
        self._probe: KafkaConsumer | None = None

    def subscribe(self, topic: str, hooks: RebalanceHooks) -> None:
        self._consumer.subscribe(
            [topic], listener=_Listener(hooks, self._consumer, self._commit_timeout_ms)
        )

    def poll(self, timeout: float, max_records: int) -> Chunk | None:
        try:
            polled = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except KafkaError as exc:
            raise translate(exc, "poll") from exc
        if not polled:
            return None
        messages: list[Any] = []
        last: dict[Partition, int] = {}
        for tp, records in polled.items():
            messages.extend(records)
            last[(tp.topic, tp.partition)] = records[-1].offset
        return Chunk(messages, [r.value for r in messages], last)

    def source_of(self, message: Any) -> SourceMessage:
        return message  # kafka-python's ConsumerRecord has every field a SourceMessage has

    def commit(self, offsets: dict[Partition, int], timeout: float) -> None:
        try:
            self._consumer.commit(kafka_offsets(offsets), timeout_ms=int(timeout * 1000))
        except KafkaError as exc:
            raise translate(exc, "commit") from exc

    def assignment(self) -> set[Partition]:
        return {(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def position(self, partition: Partition) -> int:
        return int(self._consumer.position(_tp(partition)))

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(_tp(partition), offset)

    def highwater(self, partition: Partition) -> int | None:
        high = self._consumer.highwater(_tp(partition))
        return None if high is None else int(high)

    def topic_id(self, topic: str) -> str | None:
        found = self._consumer._client.cluster.topic_id(topic)  # no public accessor
        return None if found is None else str(found)

    def reset_positions(self, partitions: set[Partition]) -> None:
        # Only partitions the client holds now (a rebalance may be under way); and never
        # none: kafka-python's seek_to_* with no partition means every assigned one.
        held = self._consumer.assignment()
        tps = [tp for tp in (_tp(p) for p in sorted(partitions)) if tp in held]
        if not tps:
            return
        if self._config["auto_offset_reset"] == "latest":
            self._consumer.seek_to_end(*tps)
        else:
            self._consumer.seek_to_beginning(*tps)

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
            config = dict(self._config)
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
    """Takes :func:`~worker.kafka.ports.commit_on_revoke` without blocking the IO thread.

    kafka-python 3 runs rebalance listeners on its IO thread (during ``poll``
    and ``close``), where a blocking ``consumer.commit`` raises "Cannot block on
    net.run() from the IO thread itself". The async listener awaits the
    coordinator's commit coroutine instead, so heartbeats keep flowing. (That
    coroutine is the one ``KafkaConsumer.commit`` runs; kafka-python has no
    public awaitable commit.)
    """

    def __init__(self, hooks: RebalanceHooks, consumer: Any, timeout_ms: int) -> None:
        self.hooks, self.consumer, self.timeout_ms = hooks, consumer, timeout_ms

    async def _commit(self, offsets: dict[Partition, int]) -> None:
        coordinator = self.consumer._coordinator
        try:
            await coordinator._commit_offsets_sync_async(
                kafka_offsets(offsets), timeout_ms=self.timeout_ms
            )
        except KafkaError as exc:
            raise translate(exc, "commit") from exc

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        partitions = {(tp.topic, tp.partition) for tp in revoked}
        await commit_on_revoke(self.hooks, partitions, self._commit)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.hooks.on_assigned({(tp.topic, tp.partition) for tp in assigned})

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.hooks.lost({(tp.topic, tp.partition) for tp in lost})


def kafka_offsets(offsets: dict[Partition, int]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}

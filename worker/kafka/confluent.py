"""The librdkafka driver (``ANOMALY_KAFKA_CLIENT=confluent``), through confluent-kafka.

librdkafka fetches and decodes record batches in C on its own threads; the
worker's main thread only takes ready records off its queue. Rebalance, error,
statistics and delivery callbacks run inside ``consume``/``poll``/``flush`` on
the calling (main) thread, so the rebalance hooks may block and commit
synchronously.

Install with ``pip install 'anomaly-worker[confluent]'``. This module is its consumer; the
producer is :mod:`worker.kafka.confluent_producer`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import confluent_kafka as ck  # the [confluent] extra; settings refuse this client without it

from worker.contract.messages import Message, Partition, SourceMessage
from worker.kafka.options import (
    Connection,
    ConsumerOptions,
    connection_choices,
    consumer_choices,
    librdkafka_config,
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
    run_inline,
)

__all__ = ["ConfluentConsumer", "client_config", "consumer_config", "metadata", "translate"]

logger = logging.getLogger(__name__)

#: How long start-up waits for the cluster's metadata before calling the broker unreachable.
METADATA_TIMEOUT_SECONDS = 5.0
#: How often librdkafka reports its statistics (the group link's health is read from them).
STATISTICS_INTERVAL_MS = 1000
#: How long librdkafka waits before fetching a partition again once its local queue held
#: ``queued.min.messages`` (100,000) records. Its default, 1 s, outlasts the time the worker
#: takes to empty that queue (~0.5 s at 200,000 records/s): every catch-up (a restart, a
#: rebalance, a burst) then stalls on an empty queue for the rest of the second, and a
#: drain of a filled topic ran at half its rate (docs/benchmarks.md). 10 ms drained as fast
#: as 100 ms but cost a slow worker (per-entity baselines for 10,000 entities) 19% of its
#: rate in one run (refetching as soon as its queue dips below the limit); 100 ms cost it 4%.
#: The check is local (no request is sent while the queue is full).
FETCH_QUEUE_BACKOFF_MS = 100
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


def client_config(connection: Connection) -> dict[str, Any]:
    """librdkafka's names for the connection and security settings."""
    return {
        **librdkafka_config(connection_choices(connection)),
        "socket.connection.setup.timeout.ms": 5000,
    }


def consumer_config(connection: Connection, options: ConsumerOptions) -> dict[str, Any]:
    return {
        **client_config(connection),
        **librdkafka_config(consumer_choices(options)),
        "enable.auto.offset.store": False,
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
        "statistics.interval.ms": STATISTICS_INTERVAL_MS,
        "allow.auto.create.topics": False,
    }


def _partition(tp: Any) -> Partition:
    return (tp.topic, tp.partition)


def translate(err: Any, what: str) -> TransportError:
    """A librdkafka error in the worker's terms."""
    text = f"{what}: {err.name()}: {err.str()}"
    if err.code() in _REJECTED:
        return CommitRejected(text)
    if err.fatal() or not (err.retriable() or err.code() < 0):
        return TransportError(text)
    return TransientError(text)  # librdkafka's local errors (negative codes) are retried by it


def metadata(client: Any, topic: str | None = None) -> Any:
    """Cluster metadata; BrokerUnreachable when no broker answers in time."""
    try:
        return client.list_topics(topic, timeout=METADATA_TIMEOUT_SECONDS)
    except ck.KafkaException as exc:
        raise BrokerUnreachable(
            f"no metadata within {METADATA_TIMEOUT_SECONDS:.0f}s: {exc}"
        ) from exc


class ConfluentConsumer:
    """The group consumer. Its callbacks all run inside :meth:`poll` on the main thread."""

    def __init__(self, connection: Connection, options: ConsumerOptions) -> None:
        self._config = consumer_config(connection, options)
        self._group_id = options.group_id
        self._commit_timeout = options.shutdown_timeout_seconds
        self._group_up_at: float | None = None
        self._consumer = ck.Consumer(
            {
                **self._config,
                "stats_cb": self._on_stats,
                "error_cb": self._on_error,
                "logger": logger,
            }
        )
        try:
            metadata(self._consumer)
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
        revoked = {_partition(tp) for tp in partitions}
        run_inline(commit_on_revoke(self._hooks, revoked, self._commit_blocking))

    async def _commit_blocking(self, offsets: dict[Partition, int]) -> None:
        self.commit(offsets, self._commit_timeout)  # may block: we are on the main thread

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
            raise translate(exc.args[0], "poll") from exc
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
                self._held = translate(err, "poll")
        return kept, kept_values

    def source_of(self, message: Any) -> SourceMessage:
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
            raise translate(exc.args[0], "commit") from exc
        for tp in results or []:
            if tp.error is not None:
                raise translate(tp.error, "commit")

    def assignment(self) -> set[Partition]:
        return {_partition(tp) for tp in self._consumer.assignment()}

    def position(self, partition: Partition) -> int:
        (tp,) = self._consumer.position([ck.TopicPartition(*partition)])
        return int(tp.offset)

    def seek(self, partition: Partition, offset: int) -> None:
        self._consumer.seek(ck.TopicPartition(*partition, offset))

    def topic_id(self, topic: str) -> str | None:
        return None  # confluent-kafka's metadata carries no topic id

    def reset_positions(self, partitions: set[Partition]) -> None:
        where = (
            ck.OFFSET_END if self._config["auto.offset.reset"] == "latest" else ck.OFFSET_BEGINNING
        )
        held = {(tp.topic, tp.partition) for tp in self._consumer.assignment()}
        for partition in sorted(partitions & held):  # a rebalance may be under way
            self._consumer.seek(ck.TopicPartition(*partition, where))

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
            config = dict(self._config)
            # A throw-away group id that never joins (assign, not subscribe) nor commits.
            config["group.id"] = f"{self._group_id}-probe-{uuid.uuid4().hex[:8]}"
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

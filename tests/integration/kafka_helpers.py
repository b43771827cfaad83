"""Talking to the test broker: topics, an independent producer, reading outputs back."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Producer
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.consumer.fetcher import Fetcher
from kafka.record import MemoryRecords


@dataclass(frozen=True)
class Topics:
    input: str
    alerts: str
    dlq: str
    group: str

    @classmethod
    def unique(cls) -> Topics:
        tag = uuid.uuid4().hex[:10]
        return cls(f"in-{tag}", f"alerts-{tag}", f"dlq-{tag}", f"group-{tag}")


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        admin.close()


def produce(
    bootstrap: str,
    topic: str,
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    partition: int | None = None,
    config: dict[str, object] | None = None,
    headers: Sequence[list[tuple[str, bytes]] | None] | None = None,
) -> dict[int, int]:
    """Produce with confluent-kafka (an independent client); return the end offset per partition.

    ``config`` adds librdkafka options (e.g. ``{"compression.type": "lz4"}``).
    """
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "enable.idempotence": False,
            **(config or {}),
        }
    )
    ends: dict[int, int] = {}
    errors: list[object] = []

    def delivered(err, msg) -> None:  # type: ignore[no-untyped-def]
        if err is not None:
            errors.append(err)
        else:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    for i, value in enumerate(values):
        key = keys[i] if keys is not None else None
        kwargs: dict[str, object] = {"partition": partition} if partition is not None else {}
        if headers is not None and headers[i] is not None:
            kwargs["headers"] = headers[i]
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    remaining = producer.flush(30)
    assert remaining == 0 and not errors, f"produce failed: {remaining} left, errors {errors[:3]}"
    return ends


def read_topic(
    bootstrap: str,
    topic: str,
    expect: int,
    timeout_seconds: float = 30.0,
    settle_seconds: float = 0.5,
    isolation_level: str = "read_uncommitted",
):
    """Every record of ``topic`` once ``expect`` arrived, plus a short settle for extras."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        isolation_level=isolation_level,
    )
    try:
        deadline = time.monotonic() + timeout_seconds
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                time.sleep(0.1)
        assert partitions, f"topic {topic} does not exist"
        consumer.assign([TopicPartition(topic, p) for p in partitions])
        consumer.seek_to_beginning()
        records = []
        settle_until = None
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if len(records) >= expect:
                settle_until = settle_until or time.monotonic() + settle_seconds
                if time.monotonic() >= settle_until:
                    break
        return records
    finally:
        consumer.close()


def broker_filters_aborted_records(bootstrap: str, topic: str) -> bool:
    """Whether the broker keeps records of aborted transactions from read_committed readers
    (Apache Kafka does; the embedded Tansu does not). Writes one aborted record to ``topic``."""
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": f"probe-{topic}"})
    producer.init_transactions()
    producer.begin_transaction()
    producer.produce(topic, value=b"probe", partition=0)
    producer.flush()
    producer.abort_transaction()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.seek_to_beginning()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            if any(r.value == b"probe" for rs in consumer.poll(200).values() for r in rs):
                return False
        return True
    finally:
        consumer.close()


_FENCING: dict[str, bool] = {}


def broker_fences_stale_generations(bootstrap: str, topic: str) -> bool:
    """Whether the broker refuses transactional offsets of a consumer group generation that has
    moved on (KIP-447's zombie fencing; Apache Kafka 2.5+ does, the embedded Tansu does not).

    Joins two members to a throw-away group on ``topic`` (created, 2 partitions), then commits
    offsets in a transaction with the first member's metadata from before the second joined.
    The answer is cached per broker.
    """
    if bootstrap in _FENCING:
        return _FENCING[bootstrap]
    from confluent_kafka import Consumer, KafkaException
    from confluent_kafka import TopicPartition as Tp

    create_topics(bootstrap, [topic], partitions=2)
    group = f"fencing-probe-{uuid.uuid4().hex[:8]}"

    def member() -> Consumer:
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                "enable.auto.commit": False,
            }
        )
        consumer.subscribe([topic])
        return consumer

    first = member()
    second = None
    try:
        wait_for(lambda: first.poll(0.1) is None and first.assignment(), 30, 0, "a first member")
        stale = first.consumer_group_metadata()
        second = member()
        wait_for(
            lambda: (first.poll(0.05), second.poll(0.05)) and second.assignment(),
            30,
            0,
            "a rebalance",
        )
        producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": group})
        producer.init_transactions(10)
        producer.begin_transaction()
        try:
            producer.send_offsets_to_transaction([Tp(topic, 0, 0)], stale, 10)
            producer.commit_transaction(10)
            fenced = False
        except KafkaException:
            fenced = True
    finally:
        first.close()
        if second is not None:
            second.close()
    _FENCING[bootstrap] = fenced
    return fenced


def committed(bootstrap: str, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        result = {}
        for p in partitions:
            offset = consumer.committed(TopicPartition(topic, p))
            result[p] = offset if offset is not None else 0
        return result
    finally:
        consumer.close(autocommit=False)


def wait_for(predicate, timeout_seconds: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_seconds}s waiting for {message}")


def wait_committed(
    bootstrap: str, group: str, topic: str, ends: dict[int, int], timeout_seconds: float = 60
):
    """Wait until ``group`` has committed ``topic`` up to ``ends`` (partition -> end offset)."""
    seen: dict[int, int] = {}

    def done() -> bool:
        seen.update(committed(bootstrap, group, topic, ends))
        return seen == ends

    try:
        wait_for(done, timeout_seconds, message=f"{group} to commit {topic} up to {ends}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; committed: {dict(sorted(seen.items()))}") from None


@dataclass
class TopicLog:
    """A topic's records by the fate of the transaction they were written in.

    Worked out from the log itself, as a broker does for ``read_committed`` readers: a
    transactional record is committed or aborted by the next control record (commit or
    abort marker) of its producer in its partition, and open while there is none yet.
    Records written outside transactions are committed.
    """

    committed: list[Any] = field(default_factory=list)
    aborted: list[Any] = field(default_factory=list)
    open: list[Any] = field(default_factory=list)


def read_log(bootstrap: str, topic: str, timeout_seconds: float = 60.0) -> TopicLog:
    """Every record of ``topic`` (read uncommitted), sorted into a :class:`TopicLog`.

    Reads each partition to its high-water mark. Record batch headers (producer id,
    transactional flag, control markers) are taken from the fetch responses through a
    recording subclass of kafka-python's ``Fetcher.PartitionRecords``.
    """
    batches: dict[tuple[str, int], dict[int, tuple[int, bool, str | None, int]]] = defaultdict(dict)

    class Recording(Fetcher.PartitionRecords):  # type: ignore[misc,name-defined]
        def __init__(self, fetch_offset, tp, records, *args, **kwargs):  # type: ignore[no-untyped-def]
            scan = MemoryRecords(bytes(records._buffer))
            while (batch := scan.next_batch()) is not None:
                marker = None
                if batch.is_control_batch:
                    marker = "commit" if next(iter(batch)).commit else "abort"
                batches[(tp.topic, tp.partition)][batch.base_offset] = (
                    batch.producer_id,
                    batch.is_transactional,
                    marker,
                    batch.last_offset,
                )
            super().__init__(fetch_offset, tp, records, *args, **kwargs)

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_uncommitted",
        fetch_max_wait_ms=100,
    )
    consumer._fetcher.PartitionRecords = Recording
    try:
        partitions = wait_for(
            lambda: consumer.partitions_for_topic(topic), timeout_seconds, 0.1, f"topic {topic}"
        )
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        records: dict[tuple[int, int], Any] = {}
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.update({(r.partition, r.offset): r for r in batch})
            ends = [consumer.highwater(tp) for tp in tps]
            if all(
                e is not None and consumer.position(tp) >= e
                for tp, e in zip(tps, ends, strict=True)
            ):
                break
        else:
            raise AssertionError(f"{topic} not read to its end in {timeout_seconds}s")
    finally:
        consumer.close()
    log = TopicLog()
    for (_, partition), by_base in batches.items():
        pending: dict[int, list[Any]] = defaultdict(list)
        for base in sorted(by_base):
            producer_id, transactional, marker, last = by_base[base]
            if marker is not None:
                fate = log.committed if marker == "commit" else log.aborted
                fate.extend(pending.pop(producer_id, []))
                continue
            offsets = [(partition, o) for o in range(base, last + 1)]
            mine = [records[key] for key in offsets if key in records]
            (pending[producer_id] if transactional else log.committed).extend(mine)
        for left in pending.values():
            log.open.extend(left)
    return log

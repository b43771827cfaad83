"""Talking to the test broker: topics, an independent producer, reading outputs back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from confluent_kafka import Producer
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic


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
):
    """Every record of ``topic`` once ``expect`` arrived, plus a short settle for extras."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
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
    wait_for(
        lambda: committed(bootstrap, group, topic, ends) == ends,
        timeout_seconds,
        message=f"{group} to commit {topic} up to {ends}",
    )

"""Training data from Kafka: a bounded window of recent traffic, read without joining any group.

The window is every partition's last ``last`` records (or those since a time),
up to the high-water marks seen when reading starts. Offsets come from fetch
high-water marks, not ListOffsets, which some brokers answer wrongly after
batched writes. The client is the workers' (``ANOMALY_KAFKA_CLIENT``): kafka-python,
or librdkafka through confluent-kafka; both return the same records.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from training.data import Table
from training.exceptions import DataError
from worker.contract.decode import decode_batch
from worker.contract.messages import Message
from worker.contract.records import FeatureSchema, labelled_anomaly, record_id
from worker.contract.scoring import Scorer
from worker.kafka.options import (
    Connection,
    connection_choices,
    kafka_python_config,
    librdkafka_config,
)

__all__ = [
    "NormalTraffic",
    "WindowConfig",
    "alerted_ids",
    "infer_feature_names",
    "normal_traffic",
    "read_window",
]

logger = logging.getLogger(__name__)

#: Largest fetch per partition while reading a window (bigger than the worker's: a bulk read).
WINDOW_FETCH_BYTES = 4 * 1024 * 1024
#: How long a fetch may wait for data while reading a window.
WINDOW_FETCH_WAIT_MS = 100
#: How long kafka-python tries the bootstrap servers before saying none answers.
BOOTSTRAP_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class WindowConfig:
    """Which records of the input (and alert) topic a retraining reads."""

    last: int = 50_000
    """The last N records per partition; bounds memory, also with ``since``."""
    since: float | None = None
    """Of those, the records since this time (epoch seconds)."""
    alert_scan_last: int = 200_000
    """Read at most the last N alerts per partition to exclude their ids."""
    read_timeout_seconds: float = 120.0
    """Give up reading a topic's window after this many seconds."""
    read_alert_topic: bool = True
    """Exclude the records the workers alerted on (read from the alert topic)."""


def read_window(
    connection: Connection,
    topic: str,
    last: int | None = None,
    since: float | None = None,
    timeout_seconds: float = 120.0,
) -> list[Message]:
    """Records of ``topic`` in the window, partition by partition in offset order."""
    read = _read_with_librdkafka if connection.client == "confluent" else _read_with_kafka_python
    deadline = time.monotonic() + timeout_seconds
    by_partition = read(connection, topic, last, since, deadline, timeout_seconds)
    window = [m for partition in sorted(by_partition) for m in by_partition[partition]]
    logger.info("read %d records of %s (window: last=%s since=%s)", len(window), topic, last, since)
    return window


def _start(low: int, high: int, last: int | None) -> int:
    return low if last is None else max(low, high - last)


def _late(deadline: float, what: str) -> None:
    if time.monotonic() > deadline:
        raise DataError(what)


def _read_with_kafka_python(
    connection: Connection,
    topic: str,
    last: int | None,
    since: float | None,
    deadline: float,
    timeout_seconds: float,
) -> dict[int, list[Message]]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        **kafka_python_config(connection_choices(connection)),
        bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=WINDOW_FETCH_WAIT_MS,
        max_partition_fetch_bytes=WINDOW_FETCH_BYTES,
    )
    try:
        partitions = None
        while partitions is None:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                _late(deadline, f"topic {topic!r} not found")
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        consumer.seek_to_beginning()
        high: dict[Any, int] = {}
        while len(high) < len(tps):
            consumer.poll(timeout_ms=200, max_records=1)
            for tp in tps:
                value = consumer.highwater(tp)
                if value is not None:
                    high[tp] = value
            _late(deadline, f"no fetch response for {sorted(set(tps) - set(high))}")
        for tp in tps:
            consumer.seek(tp, _start(begin[tp], high[tp], last))
        records: dict[int, list[Message]] = {tp.partition: [] for tp in tps}
        pending = {tp for tp in tps if consumer.position(tp) < high[tp]}
        since_ms = None if since is None else since * 1000.0
        while pending:
            _late(deadline, f"reading the window of {topic!r} took longer than {timeout_seconds}s")
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for r in batch:
                    if r.offset < high[tp] and (since_ms is None or r.timestamp >= since_ms):
                        records[tp.partition].append(
                            Message(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value)
                        )
                if consumer.position(tp) >= high[tp]:
                    pending.discard(tp)
        return records
    finally:
        consumer.close(autocommit=False)


def _read_with_librdkafka(
    connection: Connection,
    topic: str,
    last: int | None,
    since: float | None,
    deadline: float,
    timeout_seconds: float,
) -> dict[int, list[Message]]:
    import confluent_kafka as ck

    consumer = ck.Consumer(
        {
            **librdkafka_config(connection_choices(connection)),
            # Never joins (assign, not subscribe) nor commits: a throw-away group id.
            "group.id": f"anomaly-train-window-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": WINDOW_FETCH_WAIT_MS,
            "max.partition.fetch.bytes": WINDOW_FETCH_BYTES,
            "logger": logger,
        }
    )
    try:
        numbers: list[int] = []
        while not numbers:
            found = consumer.list_topics(topic, timeout=5.0).topics.get(topic)
            if found is not None and found.error is None and found.partitions:
                numbers = sorted(found.partitions)
            else:
                _late(deadline, f"topic {topic!r} not found")
                time.sleep(0.2)
        # The high-water marks of the first fetch responses (cached), the beginnings from
        # ListOffsets (right on every broker; only its end offsets are not).
        consumer.assign([ck.TopicPartition(topic, p, ck.OFFSET_BEGINNING) for p in numbers])
        high: dict[int, int] = {}
        while len(high) < len(numbers):
            consumer.poll(0.2)
            for p in numbers:
                value = consumer.get_watermark_offsets(ck.TopicPartition(topic, p), cached=True)
                if value is not None and value[1] >= 0:
                    high[p] = int(value[1])
            _late(deadline, f"no fetch response for {sorted(set(numbers) - set(high))}")
        starts = {}
        for p in numbers:
            low, _ = consumer.get_watermark_offsets(
                ck.TopicPartition(topic, p), timeout=max(deadline - time.monotonic(), 0.1)
            )
            starts[p] = _start(int(low), high[p], last)
        consumer.assign([ck.TopicPartition(topic, p, starts[p]) for p in numbers])
        records: dict[int, list[Message]] = {p: [] for p in numbers}
        pending = {p for p in numbers if starts[p] < high[p]}
        since_ms = None if since is None else since * 1000.0
        while pending:
            _late(deadline, f"reading the window of {topic!r} took longer than {timeout_seconds}s")
            for m in consumer.consume(10_000, 0.2):
                if m.error() is not None:
                    continue  # end of partition and other events: retried by the client
                p, offset, ts = int(m.partition() or 0), int(m.offset() or 0), m.timestamp()[1]
                if offset < high[p] and (since_ms is None or ts >= since_ms):
                    records[p].append(Message(topic, p, offset, ts, m.key(), m.value()))
                if offset + 1 >= high[p]:
                    pending.discard(p)
        return records
    finally:
        consumer.close()


@dataclass
class NormalTraffic:
    """Rows fit to train on, their timestamps, and how many rows were excluded, by reason.

    ``window`` holds every decodable row of the window before exclusions (what drift is
    measured on), ``window_scores`` the current model's scores of them (empty without one).
    """

    table: Table
    excluded: dict[str, int] = field(default_factory=dict)
    timestamps: np.ndarray = field(default_factory=lambda: np.empty(0))
    window: np.ndarray = field(default_factory=lambda: np.empty((0, 0), dtype=np.float32))
    window_scores: np.ndarray = field(default_factory=lambda: np.empty(0))


def alerted_ids(alert_records: Iterable[Message]) -> set[str]:
    ids = set()
    for r in alert_records:
        try:
            ids.add(str(json.loads(r.value or b"")["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def normal_traffic(
    records: list[Message],
    feature_names: tuple[str, ...],
    alerted: set[str],
    current: Scorer | None,
    max_record_bytes: int = 1 << 20,
) -> NormalTraffic:
    """Decode with the worker's decoder and drop what is not normal traffic, counting why."""
    # As the workers decode (ANOMALY_UNKNOWN_FEATURES=ignore, the default): a feature the
    # model lacks is left out, so an added feature does not empty the window.
    decoded = decode_batch(
        [r.value for r in records], FeatureSchema(feature_names), max_record_bytes, True
    )
    excluded: dict[str, int] = {}
    for bad in decoded.invalid:
        key = f"invalid:{bad.reason}"
        excluded[key] = excluded.get(key, 0) + 1
    keep = np.ones(len(decoded.positions), dtype=bool)
    labels = [labelled_anomaly(r) for r in decoded.records]
    labelled = np.array([label is True for label in labels], dtype=bool)
    unreadable = np.array([label is None for label in labels], dtype=bool)
    excluded["labelled_anomaly"] = int(labelled.sum())
    if unreadable.any():
        excluded["invalid_label"] = int(unreadable.sum())
    keep &= ~labelled & ~unreadable
    ids = [
        record_id(rec, records[int(p)])
        for rec, p in zip(decoded.records, decoded.positions, strict=True)
    ]
    on_alert_topic = np.array([i in alerted for i in ids], dtype=bool)
    excluded["on_alert_topic"] = int((on_alert_topic & keep).sum())
    keep &= ~on_alert_topic
    scores = np.empty(0)
    if current is not None and len(decoded.features):
        entities = [r.entity for r in decoded.records]
        scores = current.score(decoded.features, entities).scores
        above = scores > current.metadata.threshold
        excluded["above_current_threshold"] = int((above & keep).sum())
        keep &= ~above
    timestamps = np.array([records[int(p)].timestamp for p in decoded.positions], dtype=np.float64)
    kept = [r.entity for r, k in zip(decoded.records, keep.tolist(), strict=True) if k]
    # Each row's entity (for --per-entity), when the records name one.
    table = Table(
        decoded.features[keep],
        feature_names,
        entities=kept if any(e is not None for e in kept) else None,
    )
    logger.info(
        "normal traffic: %d rows kept of %d read; excluded %s", keep.sum(), len(records), excluded
    )
    return NormalTraffic(table, excluded, timestamps[keep] / 1000.0, decoded.features, scores)


def infer_feature_names(records: list[Message]) -> tuple[str, ...]:
    """Names from the first record with features: its keys, or f0..fN-1 for a list."""
    for r in records:
        try:
            features = json.loads(r.value or b"")["features"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(features, dict) and features:
            return tuple(str(k) for k in features)
        if isinstance(features, list) and features:
            return tuple(f"f{i}" for i in range(len(features)))
    raise DataError("no record in the window has features to learn their names from")

"""Training data from Kafka: a bounded window of recent traffic, read without joining any group.

The window is every partition's last ``last`` records (or those since a time),
up to the high-water marks seen when reading starts. Offsets come from fetch
high-water marks, not ListOffsets, which some brokers answer wrongly after
batched writes.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from training.data import Table
from training.exceptions import DataError
from worker.alerts import record_id
from worker.records import FeatureSchema, decode_batch
from worker.scoring import Scorer

__all__ = ["NormalTraffic", "normal_traffic", "read_window"]

logger = logging.getLogger(__name__)


def read_window(
    client: dict[str, Any],
    topic: str,
    last: int | None = None,
    since: float | None = None,
    timeout_seconds: float = 120.0,
) -> list[Any]:
    """Records of ``topic`` in the window, partition by partition in offset order."""
    consumer = KafkaConsumer(
        **client,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        deadline = time.monotonic() + timeout_seconds
        partitions = None
        while partitions is None:
            partitions = consumer.partitions_for_topic(topic)
            if partitions is None:
                if time.monotonic() > deadline:
                    raise DataError(f"topic {topic!r} not found")
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        begin = consumer.beginning_offsets(tps)
        consumer.seek_to_beginning()
        high: dict[TopicPartition, int] = {}
        while len(high) < len(tps):
            consumer.poll(timeout_ms=200, max_records=1)
            for tp in tps:
                value = consumer.highwater(tp)
                if value is not None:
                    high[tp] = value
            if time.monotonic() > deadline:
                raise DataError(f"no fetch response for {sorted(set(tps) - set(high))}")
        for tp in tps:
            start = begin[tp] if last is None else max(begin[tp], high[tp] - last)
            consumer.seek(tp, start)
        records: dict[TopicPartition, list[Any]] = {tp: [] for tp in tps}
        pending = {tp for tp in tps if consumer.position(tp) < high[tp]}
        since_ms = None if since is None else since * 1000.0
        while pending:
            if time.monotonic() > deadline:
                raise DataError(
                    f"reading the window of {topic!r} took longer than {timeout_seconds}s"
                )
            for tp, batch in consumer.poll(timeout_ms=200).items():
                for r in batch:
                    if r.offset < high[tp] and (since_ms is None or r.timestamp >= since_ms):
                        records[tp].append(r)
                if consumer.position(tp) >= high[tp]:
                    pending.discard(tp)
        window = [r for tp in tps for r in records[tp]]
        logger.info(
            "read %d records of %s (window: last=%s since=%s)", len(window), topic, last, since
        )
        return window
    finally:
        consumer.close(autocommit=False)


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


def alerted_ids(alert_records: Iterable[Any]) -> set[str]:
    ids = set()
    for r in alert_records:
        try:
            ids.add(str(json.loads(r.value)["id"]))
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def normal_traffic(
    records: list[Any],
    feature_names: tuple[str, ...],
    alerted: set[str],
    current: Scorer | None,
    max_record_bytes: int = 1 << 20,
) -> NormalTraffic:
    """Decode with the worker's decoder and drop what is not normal traffic, counting why."""
    decoded = decode_batch(
        [r.value for r in records], FeatureSchema(feature_names), max_record_bytes
    )
    excluded: dict[str, int] = {}
    for bad in decoded.invalid:
        key = f"invalid:{bad.reason}"
        excluded[key] = excluded.get(key, 0) + 1
    keep = np.ones(len(decoded.positions), dtype=bool)
    labelled = np.array([bool(r.label) for r in decoded.records], dtype=bool)
    excluded["labelled_anomaly"] = int(labelled.sum())
    keep &= ~labelled
    ids = [
        record_id(rec, records[int(p)])
        for rec, p in zip(decoded.records, decoded.positions, strict=True)
    ]
    on_alert_topic = np.array([i in alerted for i in ids], dtype=bool)
    excluded["on_alert_topic"] = int((on_alert_topic & keep).sum())
    keep &= ~on_alert_topic
    scores = np.empty(0)
    if current is not None and len(decoded.features):
        scores = current.score(decoded.features).scores
        above = scores > current.metadata.threshold
        excluded["above_current_threshold"] = int((above & keep).sum())
        keep &= ~above
    timestamps = np.array([records[int(p)].timestamp for p in decoded.positions], dtype=np.float64)
    table = Table(decoded.features[keep], feature_names)
    logger.info(
        "normal traffic: %d rows kept of %d read; excluded %s", keep.sum(), len(records), excluded
    )
    return NormalTraffic(table, excluded, timestamps[keep] / 1000.0, decoded.features, scores)


def infer_feature_names(records: list[Any]) -> tuple[str, ...]:
    """Names from the first record with features: its keys, or f0..fN-1 for a list."""
    for r in records:
        try:
            features = json.loads(r.value)["features"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(features, dict) and features:
            return tuple(str(k) for k in features)
        if isinstance(features, list) and features:
            return tuple(f"f{i}" for i in range(len(features)))
    raise DataError("no record in the window has features to learn their names from")

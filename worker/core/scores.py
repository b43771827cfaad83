"""Score records: every scored record's score, for ``ANOMALY_SCORES_TOPIC``.

One JSON object per record, keyed like its alert would be (entity, else id): ``id``,
``entity``, ``ts``, ``score``, ``threshold`` (what it was judged against), ``alert``,
``model_version``, ``source`` (topic, partition, offset), with per-entity thresholds
``threshold_source``, and with a bundle of entity baselines ``baseline`` (``entity`` or
``generic``: which one scored it).
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from worker.contract.messages import SourceMessage
from worker.contract.records import Record, event_time, record_id
from worker.core.alerts import baseline_kinds, threshold_sources

__all__ = ["build_scores"]

_encode = msgspec.json.Encoder().encode


class Source(msgspec.Struct):
    topic: str
    partition: int
    offset: int


class Score(msgspec.Struct, omit_defaults=True):
    """One score record (a Struct: encoded about twice as fast as a dict)."""

    id: str
    entity: str | None
    ts: float
    score: float | None
    threshold: float
    alert: bool
    model_version: str
    source: Source
    threshold_source: str | None = None
    baseline: str | None = None


def build_scores(
    records: Sequence[Record],
    messages: Sequence[SourceMessage],
    scores: np.ndarray,
    thresholds: np.ndarray,
    alerts: np.ndarray,
    warming: np.ndarray | None,
    model_version: str,
    baseline: np.ndarray | None = None,
) -> list[tuple[bytes, bytes]]:
    """``(key, value)`` per row; every array is aligned with ``records`` and ``messages``.

    >>> import json
    >>> from worker.contract.messages import Message
    >>> [(key, value)] = build_scores([Record(features=[], id="r1", ts=5.0)],
    ...     [Message("in", 0, 7, 0, None, b"")], np.array([2.5]), np.array([4.0]),
    ...     np.array([False]), None, "v1")
    >>> key, sorted(json.loads(value))
    (b'r1', ['alert', 'entity', 'id', 'model_version', 'score', 'source', 'threshold', 'ts'])
    """
    n = len(records)
    sources = threshold_sources(warming) if warming is not None else [None] * n
    kinds: list[str | None] = [None] * n
    if baseline is not None:
        kinds = list(baseline_kinds(baseline))
    values = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(values).tolist()
    out = []
    for record, message, score, ok, threshold, alert, source, kind in zip(
        records,
        messages,
        values.tolist(),
        finite,
        thresholds.tolist(),
        alerts.tolist(),
        sources,
        kinds,
        strict=True,
    ):
        rid = record_id(record, message)
        value = _encode(
            Score(
                rid,
                record.entity,
                event_time(record, message),
                score if ok else None,
                threshold,
                alert,
                model_version,
                Source(message.topic, message.partition, message.offset),
                source,
                kind,
            )
        )
        key = record.entity if record.entity is not None else rid
        out.append((key.encode("utf-8"), value))
    return out

"""Score records: every scored record's score, for ``ANOMALY_SCORES_TOPIC``.

One JSON object per record, keyed like its alert would be (entity, else id): ``id``,
``entity``, ``ts``, ``score``, ``threshold`` (what it was judged against), ``alert``,
``model_version``, ``source`` (topic, partition, offset) and, with per-entity thresholds,
``threshold_source``.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import numpy as np

from worker.contract.messages import SourceMessage
from worker.contract.records import Record, event_time, record_id
from worker.core.alerts import finite_or_none, threshold_sources

__all__ = ["build_scores"]

_encode = msgspec.json.Encoder().encode


def build_scores(
    records: Sequence[Record],
    messages: Sequence[SourceMessage],
    scores: np.ndarray,
    thresholds: np.ndarray,
    alerts: np.ndarray,
    warming: np.ndarray | None,
    model_version: str,
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
    sources = None if warming is None else threshold_sources(warming)
    out = []
    for i, (record, message, score, threshold, alert) in enumerate(
        zip(
            records,
            messages,
            np.asarray(scores, dtype=np.float64).tolist(),
            thresholds.tolist(),
            alerts.tolist(),
            strict=True,
        )
    ):
        rid = record_id(record, message)
        body = {
            "id": rid,
            "entity": record.entity,
            "ts": event_time(record, message),
            "score": finite_or_none(score),
            "threshold": threshold,
            "alert": alert,
            "model_version": model_version,
            "source": {
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
            },
        }
        if sources is not None:
            body["threshold_source"] = sources[i]
        key = record.entity if record.entity is not None else rid
        out.append((key.encode("utf-8"), _encode(body)))
    return out

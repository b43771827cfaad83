"""Score records: every scored record's score, for ``ANOMALY_SCORES_TOPIC``.

One JSON object per record, keyed like its alert would be (entity, else id): ``id``,
``entity``, ``ts``, ``score``, ``threshold`` (what it was judged against), ``alert``,
``model_version``, ``source`` (topic, partition, offset), with per-entity thresholds
``threshold_source``, and with a bundle of entity baselines ``baseline`` (``entity`` or
``generic``: which one scored it).

``ANOMALY_SCORES_FORMAT=batch`` packs a micro-batch's scores of one input partition into one
message instead (:class:`ScoreBatch`: the same fields, one list per field, in offset order),
split so no message exceeds the produce limit: a producer call per batch instead of per record,
for consumers that read scores in bulk. :func:`expand_scores` turns either form back into
per-record objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from worker.contract.messages import SourceMessage
from worker.contract.records import Record, event_time, record_id
from worker.core.alerts import baseline_kinds, threshold_sources

__all__ = ["ScoreBatch", "build_score_batches", "build_scores", "expand_scores"]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

#: ``kind`` of a batch message: what tells it from a single score record.
BATCH_KIND = "score_batch"


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


class ScoreBatch(msgspec.Struct, omit_defaults=True):
    """The scores of consecutive records of one input partition, one list per field (the
    fields of :class:`Score`; ``offset`` replaces ``source.offset``)."""

    kind: str
    model_version: str
    topic: str
    partition: int
    offset: list[int]
    id: list[str]
    entity: list[str | None]
    ts: list[float]
    score: list[float | None]
    threshold: list[float]
    alert: list[bool]
    threshold_source: list[str] | None = None
    baseline: list[str] | None = None


def build_score_batches(
    records: Sequence[Record],
    messages: Sequence[SourceMessage],
    scores: np.ndarray,
    thresholds: np.ndarray,
    alerts: np.ndarray,
    warming: np.ndarray | None,
    model_version: str,
    baseline: np.ndarray | None,
    max_bytes: int,
) -> tuple[list[tuple[bytes, bytes]], int]:
    """``(key, value)`` per input partition of the batch (keyed ``topic:partition``), each
    under ``max_bytes`` (key and value; more messages when needed), and how many records'
    scores were left out because even alone they would not fit (a huge id or entity).

    >>> from worker.contract.messages import Message
    >>> [(key, value)], dropped = build_score_batches(
    ...     [Record(features=[], id="r1", ts=5.0), Record(features=[], id="r2", ts=6.0)],
    ...     [Message("in", 0, 7, 0, None, b""), Message("in", 0, 8, 0, None, b"")],
    ...     np.array([2.5, 9.0]), np.array([4.0, 4.0]), np.array([False, True]), None, "v1",
    ...     None, 1 << 20)
    >>> key, [(s["id"], s["alert"], s["source"]["offset"]) for s in expand_scores(value)]
    (b'in:0', [('r1', False, 7), ('r2', True, 8)])
    """
    n = len(records)
    sources = threshold_sources(warming) if warming is not None else None
    kinds = baseline_kinds(baseline) if baseline is not None else None
    values = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(values).tolist()
    score_list = [s if ok else None for s, ok in zip(values.tolist(), finite, strict=True)]
    threshold_list, alert_list = thresholds.tolist(), alerts.tolist()
    ids = [record_id(r, m) for r, m in zip(records, messages, strict=True)]
    ts = [event_time(r, m) for r, m in zip(records, messages, strict=True)]
    entities = [r.entity for r in records]
    offsets = [m.offset for m in messages]
    groups: dict[tuple[str, int], list[int]] = {}
    for row, message in enumerate(messages):
        groups.setdefault((message.topic, message.partition), []).append(row)
    out: list[tuple[bytes, bytes]] = []
    dropped = 0

    def pick(column: list[Any], rows: list[int]) -> list[Any]:
        return column if len(rows) == n else [column[r] for r in rows]

    def encode(topic: str, partition: int, rows: list[int]) -> bytes:
        return _encode(
            ScoreBatch(
                BATCH_KIND,
                model_version,
                topic,
                partition,
                pick(offsets, rows),
                pick(ids, rows),
                pick(entities, rows),
                pick(ts, rows),
                pick(score_list, rows),
                pick(threshold_list, rows),
                pick(alert_list, rows),
                None if sources is None else pick(sources, rows),
                None if kinds is None else pick(kinds, rows),
            )
        )

    for (topic, partition), rows in groups.items():
        key = f"{topic}:{partition}".encode()
        pending = [rows]
        while pending:
            part = pending.pop(0)
            value = encode(topic, partition, part)
            if len(key) + len(value) <= max_bytes:
                out.append((key, value))
            elif len(part) == 1:
                dropped += 1
            else:
                half = len(part) // 2
                pending[:0] = [part[:half], part[half:]]
    return out, dropped


def expand_scores(value: bytes) -> list[dict[str, object]]:
    """The per-record score objects in a message of the scores topic, either form, in order
    (a batch's records get ``source`` back from its ``topic``, ``partition`` and ``offset``).

    >>> expand_scores(b'{"id": "r1", "score": 1.5}')
    [{'id': 'r1', 'score': 1.5}]
    """
    body = _decode(value)
    if not (isinstance(body, dict) and body.get("kind") == BATCH_KIND):
        return [body]
    columns = {
        name: body[name]
        for name in ScoreBatch.__struct_fields__
        if name not in ("kind", "model_version", "topic", "partition", "offset")
        and body.get(name) is not None
    }
    topic, partition, version = body["topic"], body["partition"], body["model_version"]
    out: list[dict[str, object]] = []
    for row, offset in enumerate(body["offset"]):
        record: dict[str, object] = {name: column[row] for name, column in columns.items()}
        record["model_version"] = version
        record["source"] = {"topic": topic, "partition": partition, "offset": offset}
        out.append(record)
    return out

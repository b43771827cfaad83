"""Build alert messages: one JSON object per anomalous record, keyed by entity (or id)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import numpy as np

from worker.contract.messages import SourceMessage
from worker.contract.records import Record, event_time, record_id

__all__ = [
    "EVENT_TIME_MAX_AGE_SECONDS",
    "EVENT_TIME_MAX_AHEAD_SECONDS",
    "Alert",
    "AlertContext",
    "build_alerts",
    "event_time_outside",
    "finite_or_none",
    "threshold_sources",
]

#: An alert's record is older than this (event time to now): replayed or delayed data, or a
#: wrong ``ts`` (1970, year 1). Its latency says nothing about the worker.
EVENT_TIME_MAX_AGE_SECONDS = 86_400.0
#: ... or this far in the future: a clock far off, or milliseconds sent as seconds.
EVENT_TIME_MAX_AHEAD_SECONDS = 300.0
#: A ``ts`` above this many seconds (year 5138) was almost surely meant as milliseconds.
MILLISECONDS_LIKELY = 1e11

_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class AlertContext:
    """What every alert of a batch shares."""

    feature_names: tuple[str, ...]
    threshold: float
    model_version: str
    top_features: int
    detected_at: float


@dataclass(frozen=True)
class Alert:
    """An alert ready to produce, with its event time (for the latency metric)."""

    key: bytes
    value: bytes
    event_ts: float


def event_time_outside(event_ts: float, now: float) -> str | None:
    """``"past"`` or ``"future"`` when an event time is outside the plausible range around
    ``now`` (its latency is then not measured), None when inside.

    >>> now = 1_700_000_000.0
    >>> event_time_outside(now - 5, now), event_time_outside(0.0, now)
    (None, 'past')
    >>> event_time_outside(now * 1000, now)
    'future'
    """
    lag = now - event_ts
    if lag > EVENT_TIME_MAX_AGE_SECONDS:
        return "past"
    if lag < -EVENT_TIME_MAX_AHEAD_SECONDS:
        return "future"
    return None


def threshold_sources(warming: np.ndarray) -> list[str]:
    """Where each row's threshold came from, per entity: its recent past, or the model's
    while its recent past is too short (warming up).

    >>> threshold_sources(np.array([False, True]))
    ['entity_recent', 'model_warming_up']
    """
    return ["model_warming_up" if w else "entity_recent" for w in warming.tolist()]


def baseline_kinds(baseline: np.ndarray) -> list[str]:
    """Which baseline scored each row, from its index in the bundle's entity baselines: the
    row's entity's own, or the generic one (``-1``).

    >>> baseline_kinds(np.array([3, -1]))
    ['entity', 'generic']
    """
    return ["generic" if b < 0 else "entity" for b in baseline.tolist()]


def finite_or_none(value: float) -> float | None:
    """JSON has no NaN or Infinity (RFC 8259): a non-finite number is written as ``null``.

    >>> finite_or_none(1.5), finite_or_none(float("nan")), finite_or_none(float("inf"))
    (1.5, None, None)
    """
    return value if math.isfinite(value) else None


def build_alerts(
    context: AlertContext,
    records: Sequence[Record],
    messages: Sequence[SourceMessage],
    scores: np.ndarray,
    features: np.ndarray,
    errors: np.ndarray,
    expected: np.ndarray,
    thresholds: np.ndarray | None = None,
    warming: np.ndarray | None = None,
    baseline: np.ndarray | None = None,
) -> list[Alert]:
    """One alert per row; all arrays are aligned with ``records`` and ``messages``.

    ``thresholds``: what each row was judged against, when not ``context.threshold``; with
    ``warming`` (per-entity thresholds) the alert says where its threshold came from, with
    ``baseline`` (a bundle with entity baselines) which baseline scored it.
    """
    k = min(context.top_features, len(context.feature_names))
    top = np.argsort(-errors, axis=1, kind="stable")[:, :k]
    # Python numbers for the whole batch at once (numpy scalars one by one cost more).
    names = context.feature_names
    top_names = [[names[j] for j in row] for row in top.tolist()]
    top_values = np.take_along_axis(features, top, axis=1).astype(np.float64).tolist()
    top_expected = np.take_along_axis(expected, top, axis=1).astype(np.float64).tolist()
    top_errors = np.take_along_axis(errors, top, axis=1).astype(np.float64).tolist()
    score_list = np.asarray(scores, dtype=np.float64).tolist()
    threshold_list = (
        [context.threshold] * len(score_list) if thresholds is None else thresholds.tolist()
    )
    sources = None if warming is None else threshold_sources(warming)
    kinds = None if baseline is None else baseline_kinds(baseline)
    alerts = []
    for i, (record, message) in enumerate(zip(records, messages, strict=True)):
        rid = record_id(record, message)
        ts = event_time(record, message)
        score, threshold = score_list[i], threshold_list[i]
        body = {
            "id": rid,
            "entity": record.entity,
            "ts": ts,
            "score": finite_or_none(score),
            "threshold": threshold,
            "score_ratio": finite_or_none(score / threshold),
            "model_version": context.model_version,
            "top_features": [
                {
                    "name": name,
                    "value": value,
                    "expected": finite_or_none(exp),
                    "error": finite_or_none(err),
                }
                for name, value, exp, err in zip(
                    top_names[i], top_values[i], top_expected[i], top_errors[i], strict=True
                )
            ],
            "source": {
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
            },
            "detected_at": context.detected_at,
        }
        if sources is not None:
            body["threshold_source"] = sources[i]
        if kinds is not None:
            body["baseline"] = kinds[i]
        key = record.entity if record.entity is not None else rid
        # msgspec writes UTF-8 (no \u escapes); finite_or_none already made non-finite null.
        alerts.append(Alert(key.encode("utf-8"), _encode(body), ts))
    return alerts

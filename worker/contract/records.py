"""The input record contract: what a record is, its fields, and why one can be refused.

A record is a JSON object::

    {"id": "tx-42",                      # optional, default "<topic>-<partition>-<offset>"
     "ts": 1700000000.5,                 # optional, epoch s or ISO-8601; default: Kafka timestamp
     "entity": "card-7",                 # optional, the alert key when present
     "label": 0,                         # optional, 1/true: a known anomaly (training skips it)
     "features": [0.1, 2.0, ...]}        # numbers in model order, or {"name": number, ...}

:mod:`worker.contract.decode` turns a batch of raw values into a float32 matrix plus,
for every value that cannot be scored, one of the :data:`REASONS`. The worker and
``anomaly-train`` read records with the same code, so both refuse the same ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np

from worker.contract.messages import SourceMessage

__all__ = [
    "REASONS",
    "DecodedBatch",
    "FeatureSchema",
    "Invalid",
    "Record",
    "event_time",
    "feature_change",
    "labelled_anomaly",
    "parse_timestamp",
    "record_id",
]

#: Every reason a value can be refused with, and what it means.
REASONS: dict[str, str] = {
    "empty_value": "the message has no value (a tombstone)",
    "oversized": "the value is larger than the configured maximum",
    "invalid_utf8": "the value is not UTF-8 text",
    "invalid_json": "the value is not JSON",
    "not_an_object": "the JSON value is not an object",
    "missing_features": "the object has no 'features' field",
    "invalid_features": "'features' is neither a list nor an object",
    "non_numeric_feature": "a feature value is not a number",
    "wrong_feature_count": "the list of features does not have the model's length",
    "unknown_feature": "a named feature is not one of the model's features",
    "missing_feature": "a model feature is absent from the named features",
    "non_finite": "a feature is NaN or infinite (or overflows float32)",
    "invalid_field": "'id', 'entity' or 'ts' has the wrong type or an unreadable value",
    "invalid_unicode": "a JSON string holds a lone UTF-16 surrogate escape: not Unicode text",
    "too_deep": "the JSON value nests deeper than the decoder's limit",
}


class Record(msgspec.Struct, gc=False):
    """One decoded input record (the features are kept separately, as a matrix row).

    ``gc=False``: records hold no reference cycles, so the cyclic garbage
    collector need not track the millions of them a worker decodes.
    """

    features: list[float] | dict[str, float]
    id: str | None = None
    ts: float | str | None = None
    entity: str | None = None
    label: Any = None
    """Only training reads it (:func:`labelled_anomaly`): a wrongly typed label never keeps a
    record from being scored."""


@dataclass(frozen=True)
class FeatureSchema:
    """The model's features, in order."""

    names: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.names)

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a feature schema needs at least one feature")
        if len(set(self.names)) != len(self.names):
            raise ValueError("feature names must be unique")


@dataclass(frozen=True)
class Invalid:
    """A value that cannot be scored: its position in the batch, a reason class, a detail."""

    position: int
    reason: str
    detail: str


@dataclass
class DecodedBatch:
    """The scoreable part of a batch and what was refused.

    ``features[i]`` belongs to input value ``positions[i]`` whose parsed
    metadata is ``records[i]``.
    """

    features: np.ndarray
    positions: np.ndarray
    records: list[Record]
    invalid: list[Invalid] = field(default_factory=list)
    ignored_features: dict[str, int] = field(default_factory=dict)
    """Named features the model does not have, and in how many records they were ignored
    (``decode_batch(..., ignore_unknown=True)``)."""


def parse_timestamp(value: float | str) -> float:
    """Epoch seconds from a number or an ISO-8601 string (naive means UTC).

    >>> parse_timestamp("2024-01-01T00:00:00Z")
    1704067200.0
    >>> parse_timestamp(5)
    5.0
    """
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("timestamp is not finite")
    return result


def record_id(record: Record, message: SourceMessage) -> str:
    """The record's id, or ``topic-partition-offset`` when it has none.

    >>> from worker.contract.messages import Message
    >>> record_id(Record(features=[1.0]), Message("tx", 3, 42, 0, None, b""))
    'tx-3-42'
    """
    return (
        record.id
        if record.id is not None
        else f"{message.topic}-{message.partition}-{message.offset}"
    )


def event_time(record: Record, message: SourceMessage) -> float:
    """The record's ``ts`` in epoch seconds, or the Kafka timestamp when it has none."""
    return parse_timestamp(record.ts) if record.ts is not None else message.timestamp / 1000.0


def labelled_anomaly(record: Record) -> bool | None:
    """Whether a record is labelled a known anomaly: ``true`` or a non-zero integer; ``false``,
    ``0`` or no label say it is not; anything else (``"yes"``, ``0.5``) is no label at all
    (None), which training counts and leaves out.

    >>> [labelled_anomaly(Record(features=[], label=v)) for v in (True, 1, 0, None, "yes", 0.5)]
    [True, True, False, False, None, None]
    """
    label = record.label
    if label is None:
        return False
    if isinstance(label, bool | int):
        return bool(label)
    return None


#: A feature change names at most this many features of each kind.
FEATURES_NAMED = 20


def feature_change(served: tuple[str, ...], candidate: tuple[str, ...]) -> str:
    """How ``candidate``'s features differ from ``served``'s, in words ("" when they do not).

    >>> feature_change(("a", "b", "c"), ("a", "c", "d"))
    '3 -> 3 features: removed b; added d'
    >>> feature_change(("a", "b"), ("b", "a"))
    '2 -> 2 features: same names in another order (a, b -> b, a)'
    """
    if served == candidate:
        return ""

    def names(items: list[str]) -> str:
        more = f" and {len(items) - FEATURES_NAMED} more" if len(items) > FEATURES_NAMED else ""
        return ", ".join(items[:FEATURES_NAMED]) + more

    removed = [n for n in served if n not in set(candidate)]
    added = [n for n in candidate if n not in set(served)]
    parts = [f"removed {names(removed)}"] if removed else []
    parts += [f"added {names(added)}"] if added else []
    if not parts:
        parts = [f"same names in another order ({names(list(served))} -> {names(list(candidate))})"]
    return f"{len(served)} -> {len(candidate)} features: " + "; ".join(parts)

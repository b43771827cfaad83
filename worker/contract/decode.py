"""Decode a batch of raw message values into a feature matrix; explain every refusal.

The common case costs one typed ``msgspec`` parse per record and a few numpy
calls per batch; the slow, explanatory path runs only for values that fail.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Sequence

import msgspec
import numpy as np

from worker.contract.records import (
    DecodedBatch,
    FeatureSchema,
    Invalid,
    Record,
    parse_timestamp,
)

__all__ = ["decode_batch"]

#: What a failed typed parse may raise; anything a value can make the decoder do lands here.
_PARSE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, TypeError, ValueError, RecursionError)

_decode_record = msgspec.json.Decoder(Record).decode


def decode_batch(
    values: Sequence[bytes | None], schema: FeatureSchema, max_bytes: int
) -> DecodedBatch:
    """Decode raw message values into a float32 ``[n, D]`` matrix; explain every refusal."""
    invalid: list[Invalid] = []
    records, positions = _parse(values, max_bytes, invalid)
    size = schema.size
    refused: dict[int, tuple[str, str]] = {}  # row -> (reason, detail)
    _check_utf8(values, positions, refused)

    matrix = _matrix_of_lists(records, size)
    if matrix is None:  # named features, or lists of the wrong length: row by row
        matrix = np.empty((len(records), size), dtype=np.float32)
        listed = [i for i, r in enumerate(records) if type(r.features) is list]
        if listed:
            _fill_from_lists(matrix, refused, listed, records, size)
        if len(listed) < len(records):
            named = [i for i, r in enumerate(records) if type(r.features) is dict]
            _fill_from_dicts(matrix, refused, named, records, schema.names)
    for row in np.flatnonzero(~np.isfinite(matrix).all(axis=1)).tolist():
        bad = [schema.names[j] for j in np.flatnonzero(~np.isfinite(matrix[row]))]
        refused.setdefault(row, ("non_finite", f"not finite as float32: {bad[:5]}"))
    _check_timestamps(records, refused)

    if not refused:
        return DecodedBatch(matrix, positions, records, invalid)
    invalid.extend(Invalid(int(positions[i]), *why) for i, why in refused.items())
    invalid.sort(key=lambda item: item.position)
    kept = np.setdiff1d(np.arange(len(records)), np.fromiter(refused, dtype=np.int64))
    return DecodedBatch(matrix[kept], positions[kept], [records[i] for i in kept], invalid)


_FEATURES = operator.attrgetter("features")
_TS = operator.attrgetter("ts")


def _matrix_of_lists(records: list[Record], size: int) -> np.ndarray | None:
    """The common case in one numpy call: every record lists ``size`` numbers (else None)."""
    if not records:
        return np.empty((0, size), dtype=np.float32)
    try:
        block = np.array(list(map(_FEATURES, records)), dtype=np.float64)
    except (ValueError, TypeError):  # ragged lists, or named features (dicts)
        return None
    if block.shape != (len(records), size):
        return None
    with np.errstate(over="ignore"):  # beyond float32: inf, refused as non_finite
        return block.astype(np.float32)


def _check_timestamps(records: list[Record], refused: dict[int, tuple[str, str]]) -> None:
    """Refuse a ``ts`` that is not a finite time; numbers are checked for the batch at once."""
    stamps = list(map(_TS, records))
    kinds = set(map(type, stamps))
    if kinds <= {type(None)}:
        return
    if kinds == {float}:
        rows = np.flatnonzero(~np.isfinite(np.array(stamps, dtype=np.float64))).tolist()
    else:
        rows = [
            row
            for row, ts in enumerate(stamps)
            if ts is not None and not (type(ts) is float and ts - ts == 0.0)
        ]
    for row in rows:
        if row in refused:
            continue
        ts = stamps[row]
        try:
            parse_timestamp(ts)
        except (ValueError, OverflowError, OSError):
            refused[row] = ("invalid_field", f"'ts' is not a finite time: {str(ts)[:50]!r}")


def _parse(
    values: Sequence[bytes | None], max_bytes: int, invalid: list[Invalid]
) -> tuple[list[Record], np.ndarray]:
    """Typed parse of every value; the per-value explanatory path only runs after a failure."""
    try:
        if max(map(len, values), default=0) > max_bytes:  # type: ignore[arg-type]
            raise ValueError("oversized")
        records = list(map(_decode_record, values))  # type: ignore[arg-type]
        return records, np.arange(len(records))
    except _PARSE_ERRORS:
        pass
    records, kept = [], []
    for position, value in enumerate(values):
        try:
            if value is None or len(value) > max_bytes:
                raise ValueError
            records.append(_decode_record(value))
            kept.append(position)
        except _PARSE_ERRORS as exc:
            if isinstance(exc, RecursionError):
                reason, detail = "too_deep", "nested too deeply to decode"
            else:
                reason, detail = _diagnose(value, max_bytes)
            invalid.append(Invalid(position, reason, detail))
    return records, np.asarray(kept, dtype=np.int64)


def _check_utf8(
    values: Sequence[bytes | None], positions: np.ndarray, refused: dict[int, tuple[str, str]]
) -> None:
    """msgspec skips unknown fields without checking their UTF-8; check the batch at once.

    Every parsed value starts and ends with an ASCII byte, so their concatenation
    is valid UTF-8 exactly when each of them is; ASCII (the usual JSON) is checked fastest.
    """
    kept = values if len(positions) == len(values) else [values[p] for p in positions]
    joined = b"".join(kept)  # type: ignore[arg-type]
    if joined.isascii():
        return
    try:
        joined.decode("utf-8")
        return
    except UnicodeDecodeError:
        pass
    for row, position in enumerate(positions.tolist()):
        try:
            values[position].decode("utf-8")
        except UnicodeDecodeError as exc:
            refused[row] = ("invalid_utf8", str(exc))


def _fill_from_lists(
    matrix: np.ndarray,
    refused: dict[int, tuple[str, str]],
    rows: list[int],
    records: list[Record],
    size: int,
) -> None:
    lists = [records[i].features for i in rows]
    try:
        block = np.asarray(lists, dtype=np.float64)
    except ValueError:  # ragged
        block = None
    if block is not None and block.ndim == 2 and block.shape[1] == size:
        with np.errstate(over="ignore"):
            matrix[rows] = block
        return
    for i, values in zip(rows, lists, strict=True):
        if len(values) == size:
            with np.errstate(over="ignore"):
                matrix[i] = values
        else:
            refused[i] = ("wrong_feature_count", f"expected {size} features, got {len(values)}")


def _fill_from_dicts(
    matrix: np.ndarray,
    refused: dict[int, tuple[str, str]],
    rows: list[int],
    records: list[Record],
    names: tuple[str, ...],
) -> None:
    expected = set(names)
    for i in rows:
        named = records[i].features
        assert isinstance(named, dict)
        if named.keys() == expected:
            with np.errstate(over="ignore"):
                matrix[i] = [named[n] for n in names]
            continue
        unknown = sorted(set(named) - expected)
        if unknown:
            refused[i] = ("unknown_feature", f"unknown features: {unknown[:5]}")
        else:
            missing = [n for n in names if n not in named]
            refused[i] = ("missing_feature", f"missing features: {missing[:5]}")


def _diagnose(value: bytes | None, max_bytes: int) -> tuple[str, str]:
    """Why a value failed the typed parse: a reason class and a short detail."""
    if value is None:
        return "empty_value", "the message has no value"
    if len(value) > max_bytes:
        return "oversized", f"{len(value)} bytes > {max_bytes}"
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "invalid_utf8", str(exc)
    try:
        obj = json.loads(text)
    except RecursionError:
        return "too_deep", "nested too deeply to decode"
    except ValueError as exc:
        return "invalid_json", str(exc)[:200]
    if not isinstance(obj, dict):
        return "not_an_object", f"got a JSON {type(obj).__name__}"
    if "features" not in obj:
        return "missing_features", "no 'features' field"
    features = obj["features"]
    if isinstance(features, dict):
        items = list(features.items())
    elif isinstance(features, list):
        items = [(f"[{i}]", v) for i, v in enumerate(features)]
    else:
        return "invalid_features", f"'features' is a JSON {type(features).__name__}"
    for name, number in items:
        if type(number) not in (int, float):
            return "non_numeric_feature", f"feature {name} is {json.dumps(number)[:50]}"
        try:
            finite = math.isfinite(float(number))
        except OverflowError:
            finite = False
        if not finite:
            return "non_finite", f"feature {name} is {number}"
    for name in ("id", "entity"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            return "invalid_field", f"'{name}' must be a string"
    ts = obj.get("ts")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int | float | str)):
        return "invalid_field", "'ts' must be epoch seconds or an ISO-8601 string"
    if isinstance(ts, int | float) and not math.isfinite(ts):
        return "invalid_field", f"'ts' is not a finite time: {ts}"
    return "invalid_json", "the record does not match the input contract"

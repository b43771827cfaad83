"""Load training rows: ``.npz`` (``X``, optional ``y``), ``.csv`` (header), ``.parquet`` or
``.jsonl`` records."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.exceptions import DataError
from worker.contract.decode import decode_batch
from worker.contract.records import FeatureSchema, labelled_anomaly, parse_timestamp

__all__ = ["LABEL_COLUMNS", "Table", "load_table"]

#: Label columns (CSV) or keys (npz): rows labelled non-zero are anomalies, not training data.
LABEL_COLUMNS = ("y", "label", "is_anomaly")
#: CSV columns that describe a record rather than measure it.
META_COLUMNS = ("id", "ts", "entity")


@dataclass
class Table:
    """Feature rows, their names, optional labels (1 = anomaly) and what was dropped on load."""

    X: np.ndarray
    feature_names: tuple[str, ...]
    y: np.ndarray | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    entities: list[str | None] | None = None
    """Each row's entity (an ``entity`` column or key), when the input has one."""
    ts: np.ndarray | None = None
    """Each row's event time in epoch seconds (a ``ts`` column or key), when the input has one."""

    def take(self, keep: np.ndarray) -> Table:
        """The rows where the boolean mask ``keep`` is true (labels, entities, times along)."""
        return Table(
            self.X[keep],
            self.feature_names,
            None if self.y is None else self.y[keep],
            dict(self.dropped),
            None
            if self.entities is None
            else [e for e, k in zip(self.entities, keep.tolist(), strict=True) if k],
            None if self.ts is None else self.ts[keep],
        )

    def columns_for(self, names: tuple[str, ...]) -> np.ndarray:
        """The rows as float32 with a model's features in the model's order.

        Named columns are matched by name (in any order); unnamed ones (``f0``, ``f1``, ...
        from an ``.npz`` without ``feature_names``) by position.
        """
        if self.feature_names == names:
            return np.ascontiguousarray(self.X, dtype=np.float32)
        positional = self.feature_names == tuple(f"f{i}" for i in range(self.X.shape[1]))
        if positional and self.X.shape[1] == len(names):
            return np.ascontiguousarray(self.X, dtype=np.float32)
        missing = [n for n in names if n not in self.feature_names]
        if missing:
            extra = [n for n in self.feature_names if n not in names]
            raise DataError(
                f"the model's features {missing} are not in the file"
                + (f" (it has {extra} instead)" if extra else "")
            )
        index = [self.feature_names.index(n) for n in names]
        return np.ascontiguousarray(self.X[:, index], dtype=np.float32)


def load_table(path: Path, max_record_bytes: int = 1 << 20) -> Table:
    if not path.is_file():
        raise DataError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        table = _load_npz(path)
    elif suffix == ".csv":
        table = _load_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        table = _load_jsonl(path, max_record_bytes)
    elif suffix in (".parquet", ".pq"):
        table = _load_parquet(path)
    else:
        raise DataError(
            f"{path}: unsupported file type {suffix!r} (use .npz, .csv, .parquet or .jsonl)"
        )
    if table.X.ndim != 2 or table.X.shape[0] == 0 or table.X.shape[1] == 0:
        raise DataError(f"{path}: no feature rows (shape {table.X.shape})")
    finite = np.isfinite(table.X).all(axis=1)
    if not finite.all():
        table = table.take(finite)
        table.dropped["non_finite"] = int((~finite).sum())
    return table


def _load_npz(path: Path) -> Table:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "X" not in data:
                raise DataError(f"{path}: no array 'X' (has {sorted(data.files)})")
            X = np.asarray(data["X"], dtype=np.float32)
            y = next((np.asarray(data[k]).astype(int) for k in LABEL_COLUMNS if k in data), None)
            names = (
                tuple(str(n) for n in data["feature_names"]) if "feature_names" in data else None
            )
            data_entities = data["entity"].tolist() if "entity" in data else None
            ts = _times(data["ts"].tolist(), len(X), path) if "ts" in data else None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as npz: {exc}") from exc
    if X.ndim != 2:
        raise DataError(f"{path}: 'X' must be 2-D rows x features, got shape {X.shape}")
    if names is None:
        names = tuple(f"f{i}" for i in range(X.shape[1]))
    if len(names) != X.shape[1]:
        raise DataError(f"{path}: {len(names)} feature_names for {X.shape[1]} columns")
    if y is not None and y.shape != (X.shape[0],):
        raise DataError(f"{path}: labels have shape {y.shape}, expected ({X.shape[0]},)")
    entities = _entities(data_entities, len(X), path) if data_entities is not None else None
    return Table(X, names, y, entities=entities, ts=ts)


def _entities(values: Any, rows: int, path: Path) -> list[str | None]:
    entities = [None if v is None else str(v) for v in list(values)]
    if len(entities) != rows:
        raise DataError(f"{path}: {len(entities)} entities for {rows} rows")
    return entities


def _times(values: list[Any], rows: int, path: Path) -> np.ndarray:
    """Event times (epoch seconds or ISO-8601) as float64 epoch seconds."""
    if len(values) != rows:
        raise DataError(f"{path}: {len(values)} times for {rows} rows")
    try:
        return np.array([parse_timestamp(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: a 'ts' value is not a time ({exc})") from exc


def _load_csv(path: Path) -> Table:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: empty file (a header row is required)")
        header = [h.strip() for h in header]
        label_col = next((i for i, h in enumerate(header) if h in LABEL_COLUMNS), None)
        entity_col = header.index("entity") if "entity" in header else None
        ts_col = header.index("ts") if "ts" in header else None
        feature_cols = [
            i for i, h in enumerate(header) if h not in LABEL_COLUMNS and h not in META_COLUMNS
        ]
        rows, labels, entities, times = [], [], [], []
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{line_no}: {len(row)} fields, header has {len(header)}")
            try:
                rows.append([float(row[i]) for i in feature_cols])
                if label_col is not None:
                    labels.append(int(float(row[label_col])))
                if entity_col is not None:
                    entities.append(row[entity_col] or None)
                if ts_col is not None:
                    times.append(_number_or_text(row[ts_col]))
            except ValueError as exc:
                raise DataError(f"{path}:{line_no}: non-numeric value ({exc})") from exc
    names = tuple(header[i] for i in feature_cols)
    X = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(names))
    y = np.asarray(labels) if label_col is not None else None
    return Table(
        X,
        names,
        y,
        entities=entities if entity_col is not None else None,
        ts=_times(times, len(rows), path) if ts_col is not None else None,
    )


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _load_parquet(path: Path) -> Table:
    """Numeric columns are features, as in a CSV: label and record columns are set apart."""
    try:
        import pyarrow.parquet as pq
        import pyarrow.types as pt
    except ImportError as exc:
        raise DataError(
            f"{path}: reading Parquet needs pyarrow: pip install 'anomaly-worker[parquet]'"
        ) from exc
    try:
        data = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as Parquet: {exc}") from exc
    label = next((name for name in data.column_names if name in LABEL_COLUMNS), None)
    names: list[str] = []
    unusable: list[str] = []
    for field_ in data.schema:
        if field_.name == label or field_.name in META_COLUMNS:
            continue
        numeric = pt.is_integer(field_.type) or pt.is_floating(field_.type)
        (names if numeric or pt.is_boolean(field_.type) else unusable).append(field_.name)
    if unusable:
        raise DataError(
            f"{path}: columns {unusable} are not numeric (features must be numbers; "
            f"{', '.join(META_COLUMNS)} and {', '.join(LABEL_COLUMNS)} are set apart)"
        )
    columns = []
    for name in names:
        column = data.column(name)
        if column.null_count:
            raise DataError(f"{path}: column {name!r} has {column.null_count} missing values")
        columns.append(column.to_numpy(zero_copy_only=False).astype(np.float32))
    X = np.column_stack(columns) if columns else np.empty((data.num_rows, 0), np.float32)
    y = None
    if label is not None:
        y = data.column(label).to_numpy(zero_copy_only=False).astype(int)
    entities = ts = None
    if "entity" in data.column_names:
        entities = _entities(data.column("entity").to_pylist(), data.num_rows, path)
    if "ts" in data.column_names:
        values = data.column("ts").to_pylist()
        # A Parquet timestamp arrives as a datetime; naive means UTC, as in parse_timestamp.
        values = [v.isoformat() if hasattr(v, "isoformat") else v for v in values]
        ts = _times(values, data.num_rows, path)
    return Table(X, tuple(names), y, entities=entities, ts=ts)


def _load_jsonl(path: Path, max_record_bytes: int) -> Table:
    import json

    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    if not lines:
        raise DataError(f"{path}: no records")
    try:
        first = json.loads(lines[0])["features"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}:1: the first record must be an object with 'features'") from exc
    if isinstance(first, dict):
        names = tuple(first)
    elif isinstance(first, list):
        names = tuple(f"f{i}" for i in range(len(first)))
    else:
        raise DataError(f"{path}:1: 'features' must be a list or an object")
    decoded = decode_batch(lines, FeatureSchema(names), max_record_bytes)
    dropped: dict[str, int] = {}
    for bad in decoded.invalid:
        dropped[bad.reason] = dropped.get(bad.reason, 0) + 1
    labels = [labelled_anomaly(r) for r in decoded.records]
    readable = np.array([label is not None for label in labels], dtype=bool)
    if not readable.all():
        dropped["invalid_label"] = int((~readable).sum())
    y = np.array([int(label is True) for label in labels], dtype=int)[readable]
    entities = [r.entity for r, keep in zip(decoded.records, readable, strict=True) if keep]
    has_entities = any(e is not None for e in entities)
    times = [r.ts for r, keep in zip(decoded.records, readable, strict=True) if keep]
    has_times = all(t is not None for t in times)
    return Table(
        decoded.features[readable],
        names,
        y if y.any() else None,
        dropped,
        entities if has_entities else None,
        _times(times, len(times), path) if has_times and times else None,
    )

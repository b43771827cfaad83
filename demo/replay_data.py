"""What ``anomaly-replay`` streams: each entity's rows in time order, with labels and incidents.

Two sources:

- ``telemetry:NAMES``: the labelled telemetry set (``../shared/data/telemetry``, or
  ``--data-dir``): ``omi`` (the 12 application servers), ``machine`` (the 2 server
  machines), or names separated by commas. One stream needs one feature schema, so the two
  families (19 and 38 metrics) are replayed separately. The model fits on the entities'
  ``train`` rows pooled (``per-entity`` protocol) or on the first fifth of each entity's
  ``test`` rows, at most 3,000 (``short``); ``test`` is streamed, a row a minute.
- a file (``.npz``, ``.csv``, ``.parquet``, ``.jsonl``) with an ``entity`` column, a ``ts``
  column (rows are sorted by it; file order without it) and a label column (``label``, ``y``
  or ``is_anomaly``) for the figures. The model fits on the first ``fit_share`` of each
  entity's rows; every row is streamed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.alarm_figures import Segment, segments_from_labels
from training.data import Table, load_table

__all__ = ["Entity", "ReplaySet", "load_file", "load_telemetry"]

#: The telemetry set, beside this checkout (tests and benchmarks only: never needed to run).
TELEMETRY_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "telemetry"
FAMILIES = {"omi": "omi-", "machine": "machine-"}
SHORT_SHARE, SHORT_MAX = 0.2, 3_000
#: Telemetry rows are a minute apart; replayed from this epoch (2024-01-01T00:00:00Z).
START_TS, STEP_SECONDS = 1_704_067_200.0, 60.0


class ReplayError(ValueError):
    """The dataset cannot be replayed as asked (one line, for the command's error)."""


@dataclass
class Entity:
    """One entity's streamed rows (time order), their labels, incidents and event times."""

    name: str
    X: np.ndarray
    labels: np.ndarray
    segments: list[Segment]
    ts: np.ndarray


@dataclass
class ReplaySet:
    feature_names: tuple[str, ...]
    entities: list[Entity]
    fit_rows: np.ndarray
    """What a fitted model learns from (pooled over entities)."""
    fit_entities: list[str]
    """The entity of each fit row."""

    def limit(self, rows: int | None) -> ReplaySet:
        """Only each entity's first ``rows`` streamed rows (incidents cut to them)."""
        if rows is None:
            return self
        cut = []
        for e in self.entities:
            segments = [
                Segment(s.start, min(s.end, rows - 1), s.kinds)
                for s in e.segments
                if s.start < rows
            ]
            cut.append(Entity(e.name, e.X[:rows], e.labels[:rows], segments, e.ts[:rows]))
        return ReplaySet(self.feature_names, cut, self.fit_rows, self.fit_entities)


def load_telemetry(spec: str, protocol: str, data_dir: Path = TELEMETRY_DIR) -> ReplaySet:
    """``spec``: ``omi``, ``machine`` or entity names separated by commas."""
    if not (data_dir / "segments.json").is_file():
        raise ReplayError(f"no telemetry set at {data_dir} (give --data-dir)")
    available = sorted(p.stem for p in data_dir.glob("*.npz"))
    if spec in FAMILIES:
        names = [n for n in available if n.startswith(FAMILIES[spec])]
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown or not names:
        raise ReplayError(
            f"unknown telemetry entities {unknown or spec!r}: use omi, machine or some of "
            + ", ".join(available)
        )
    all_segments = json.loads((data_dir / "segments.json").read_text())
    entities, fits, widths = [], [], set()
    fit_entities: list[str] = []
    for name in names:
        with np.load(data_dir / f"{name}.npz") as data:
            train, test = data["train"], data["test"]
            labels = data["test_label"].astype(np.int8)
        widths.add(test.shape[1])
        if protocol == "per-entity":
            fits.append(train)
        elif protocol == "short":
            fits.append(test[: min(int(len(test) * SHORT_SHARE), SHORT_MAX)])
        else:
            raise ReplayError(f"unknown protocol {protocol!r}: use per-entity or short")
        fit_entities += [name] * len(fits[-1])
        segments = [Segment.parse(s) for s in all_segments[name]]
        ts = START_TS + STEP_SECONDS * np.arange(len(test), dtype=np.float64)
        entities.append(Entity(name, test.astype(np.float32), labels, segments, ts))
    if len(widths) > 1:
        raise ReplayError(
            "one stream needs one feature schema: omi-* have 19 metrics, machine-* 38; "
            "replay them separately"
        )
    features = tuple(f"f{i}" for i in range(widths.pop()))
    return ReplaySet(features, entities, np.concatenate(fits).astype(np.float32), fit_entities)


def load_file(path: Path, fit_share: float) -> ReplaySet:
    """A file of rows with ``entity``, ``ts`` and a label column."""
    if not 0 < fit_share < 1:
        raise ReplayError(f"--fit-share must be between 0 and 1, got {fit_share}")
    table: Table = load_table(path)
    n = len(table.X)
    names = table.entities or ["all"] * n
    order = np.argsort(table.ts, kind="stable") if table.ts is not None else np.arange(n)
    ts = table.ts if table.ts is not None else START_TS + STEP_SECONDS * np.arange(n)
    labels = table.y if table.y is not None else np.zeros(n, dtype=np.int8)
    by_entity: dict[str, list[int]] = {}
    for i in order.tolist():
        by_entity.setdefault(names[i] or "all", []).append(i)
    entities, fits = [], []
    fit_entities: list[str] = []
    for name in sorted(by_entity):
        index = np.array(by_entity[name])
        X = table.X[index]
        y = np.asarray(labels[index], dtype=np.int8)
        head = max(1, int(len(X) * fit_share))
        fits.append(X[:head][y[:head] == 0])  # known anomalies are not training data
        fit_entities += [name] * len(fits[-1])
        entities.append(Entity(name, X, y, segments_from_labels(y), ts[index]))
    return ReplaySet(table.feature_names, entities, np.concatenate(fits), fit_entities)

"""The replay's table: each entity's figures through the worker, and the gap to offline."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demo.replay_data import ReplaySet
from training.alarm_figures import figures

__all__ = ["Decisions", "report"]

RANKING = ("vus_pr", "auc_pr", "auc_roc")
RECALL = ("all", "metric", "temporal")


@dataclass
class Decisions:
    """One entity's scores and alerts, by row; ``received``: which rows have them."""

    scores: np.ndarray
    alerts: np.ndarray
    received: np.ndarray

    @classmethod
    def empty(cls, rows: int) -> Decisions:
        return cls(np.full(rows, np.nan), np.zeros(rows, dtype=bool), np.zeros(rows, dtype=bool))


def _cell(value: float | None, digits: int = 3) -> str:
    return "" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _gap(a: dict[str, float], b: dict[str, float]) -> float:
    """The largest difference of any figure both have (NaN where neither is defined)."""
    gaps = [
        abs(a[k] - b[k]) for k in a.keys() & b.keys() if not (np.isnan(a[k]) and np.isnan(b[k]))
    ]
    return float(np.nan_to_num(max(gaps, default=0.0), nan=np.inf))


def report(
    dataset: ReplaySet,
    online: list[Decisions],
    offline: list[Decisions],
    output: Path | None = None,
) -> tuple[str, float, int]:
    """(markdown table, largest per-entity gap to offline, records without a score)."""
    lines = [
        "| entity | rows | VUS-PR | AUC-PR | AUC-ROC | false-alarm rate "
        "| event recall: all / metric / temporal | gap to offline |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    dump, worst, missing = [], 0.0, 0
    mean: dict[str, list[dict[str, float]]] = {"worker": [], "offline": []}
    for entity, got, want in zip(dataset.entities, online, offline, strict=True):
        missing += int((~got.received).sum())
        series = entity.X[:, 0]
        mine = figures(got.scores, got.alerts, entity.labels, entity.segments, series)
        theirs = figures(want.scores, want.alerts, entity.labels, entity.segments, series)
        gap = _gap(mine, theirs)
        worst = max(worst, gap)
        mean["worker"].append(mine)
        mean["offline"].append(theirs)
        dump.append(
            {
                "entity": entity.name,
                "rows": len(entity.X),
                "worker": mine,
                "offline": theirs,
                "gap": gap,
            }
        )
        lines.append(_row(entity.name, len(entity.X), mine, f"{gap:.4f}"))
    rows = sum(len(e.X) for e in dataset.entities)
    for who, picked in mean.items():
        with warnings.catch_warnings():  # a figure no entity has (no incident kinds): blank
            warnings.simplefilter("ignore", RuntimeWarning)
            averaged = _means(picked)
        lines.append(_row(f"**mean, {who}**", rows, averaged, ""))
    if output is not None:
        output.write_text(json.dumps(dump, indent=2, default=float))
    return "\n".join(lines), worst, missing


def _means(picked: list[dict[str, float]]) -> dict[str, float]:
    return {
        k: float(np.nanmean([p.get(k, np.nan) for p in picked]))
        for k in (*RANKING, "false_alarm_rate", *(f"event_recall_{r}" for r in RECALL))
    }


def _row(name: str, rows: int, f: dict[str, float], gap: str) -> str:
    recall = " / ".join(_cell(f.get(f"event_recall_{k}"), 2) or "-" for k in RECALL)
    far = f.get("false_alarm_rate", float("nan"))
    return (
        f"| {name} | {rows:,} | {_cell(f['vus_pr'])} | {_cell(f['auc_pr'])} | "
        f"{_cell(f['auc_roc'])} | {_cell(100 * far, 2)}% | {recall} | {gap} |"
    )

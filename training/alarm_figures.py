"""How a detector did on labelled telemetry: ranking and the alarms an engineer would get.

One owner for the figures ``bench/telemetry.py`` (offline) and ``anomaly-replay`` (through a
real worker) both print, so the two can be compared number for number:

- ranking: VUS-PR (TSB-AD's code when installed, sliding window from ``find_length_rank``),
  AUC-PR, AUC-ROC;
- alarms at the deployed threshold: the **false-alarm rate** (alerts on rows outside
  incidents / rows outside incidents) and the **event recall** (incident segments with at
  least one alert), also per incident kind (``metric``, ``temporal``) when segments say it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from training.evaluate import average_precision, roc_auc

__all__ = ["Segment", "alarm_figures", "figures", "segments_from_labels", "vus_pr"]


@dataclass(frozen=True)
class Segment:
    """An incident: rows ``start`` .. ``end`` (inclusive) of one entity, and its kinds."""

    start: int
    end: int
    kinds: tuple[str, ...] = ()

    @classmethod
    def parse(cls, entry: dict) -> Segment:
        """One entry of the telemetry set's ``segments.json`` (``"segment": "start-end"``)."""
        start, end = (int(x) for x in entry["segment"].split("-"))
        kinds = tuple(k for k in ("metric", "temporal") if k in entry.get("type", ""))
        return cls(start, end, kinds)


def segments_from_labels(labels: np.ndarray) -> list[Segment]:
    """Each run of consecutive 1s is one incident (kind unknown).

    >>> segments_from_labels(np.array([0, 1, 1, 0, 1]))
    [Segment(start=1, end=2, kinds=()), Segment(start=4, end=4, kinds=())]
    """
    padded = np.concatenate([[0], np.asarray(labels, dtype=np.int8) != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [Segment(int(a), int(b) - 1) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def alarm_figures(
    alerts: np.ndarray, labels: np.ndarray, segments: Sequence[Segment]
) -> dict[str, float]:
    """False-alarm rate and event recall (all, and per kind) of the decisions ``alerts``.

    >>> f = alarm_figures(np.array([1, 0, 1, 0]), np.array([0, 0, 1, 1]), [Segment(2, 3)])
    >>> f["false_alarm_rate"], f["event_recall_all"]
    (0.5, 1.0)
    """
    alerts = np.asarray(alerts, dtype=bool)
    normal = np.asarray(labels) == 0
    result = {"false_alarm_rate": float(alerts[normal].mean()) if normal.any() else float("nan")}
    caught: dict[str, list[bool]] = defaultdict(list)
    for segment in segments:
        hit = bool(alerts[segment.start : segment.end + 1].any())
        caught["all"].append(hit)
        for kind in segment.kinds:
            caught[kind].append(hit)
    for kind, hits in caught.items():
        result[f"event_recall_{kind}"] = float(np.mean(hits))
    return result


def vus_pr(labels: np.ndarray, scores: np.ndarray, series: np.ndarray) -> float:
    """VUS-PR with TSB-AD's code (``pip install --no-deps TSB-AD``), window = the period of
    ``series`` (the first metric); NaN when TSB-AD is not installed or there is no incident."""
    try:
        from TSB_AD.evaluation.basic_metrics import generate_curve
        from TSB_AD.utils.slidingWindows import find_length_rank
    except ImportError:
        return float("nan")
    if not np.any(labels):
        return float("nan")
    window = find_length_rank(np.asarray(series, dtype=np.float64), rank=1)
    return float(generate_curve(np.asarray(labels), scores, window, "opt", 250)[-1])


def figures(
    scores: np.ndarray,
    alerts: np.ndarray,
    labels: np.ndarray,
    segments: Sequence[Segment],
    series: np.ndarray,
) -> dict[str, float]:
    """Every figure of one entity's rows (in time order): ranking and alarms."""
    scores = np.asarray(scores, dtype=np.float64)
    return {
        "vus_pr": vus_pr(labels, scores, series),
        "auc_pr": average_precision(labels, scores),
        "auc_roc": roc_auc(labels, scores),
        **alarm_figures(alerts, labels, segments),
    }

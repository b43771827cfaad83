"""Score files with a bundle (the worker's own code path) and measure detection quality."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data import Table
from worker.contract.recent_threshold import DEFAULT_BLOCK_RECORDS, Judgement, RecentThreshold
from worker.contract.registry import resolve_bundle
from worker.contract.scoring import Scorer

__all__ = ["Evaluation", "average_precision", "evaluate", "judge", "roc_auc", "score_table"]

SCORE_BATCH = 8192


def score_table(model: Path, table: Table, device: str = "cpu") -> tuple[np.ndarray, Scorer]:
    """One score per row, in order, through :class:`worker.contract.scoring.Scorer` (each row
    by its entity's baseline when the bundle has them and the table says each row's entity)."""
    scorer = Scorer.load(resolve_bundle(model)[0], device)
    X = table.columns_for(scorer.metadata.feature_names)
    entities = table.entities
    scores = [
        scorer.score(
            X[i : i + SCORE_BATCH], None if entities is None else entities[i : i + SCORE_BATCH]
        ).scores
        for i in range(0, len(X), SCORE_BATCH)
    ]
    return np.concatenate(scores) if scores else np.empty(0, np.float32), scorer


def judge(
    threshold: float,
    rate: float,
    scores: np.ndarray,
    entities: Sequence[str | None] | None,
    mode: str,
    window: int,
    warmup: int,
) -> Judgement:
    """The worker's decisions on rows in time order, as ``ANOMALY_THRESHOLD_MODE`` ``mode``
    makes them: the model's ``threshold``, or each entity's recent past at the model's alert
    ``rate`` (nothing forgotten)."""
    if mode == "model":
        return Judgement(~(scores <= threshold), np.full(len(scores), threshold))
    entities = entities or [None] * len(scores)
    recent = RecentThreshold(
        threshold,
        rate,
        window,
        DEFAULT_BLOCK_RECORDS,
        warmup,
        max_entities=len(set(entities)) + 1,
    )
    return recent.judge(scores, entities)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), by ranks."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = np.asarray(scores)[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as average precision (sklearn's definition)."""
    labels = np.asarray(labels).astype(bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    sorted_scores, sorted_labels = np.asarray(scores)[order], labels[order]
    distinct = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
    tp = np.cumsum(sorted_labels)[distinct]
    fp = (distinct + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class Evaluation:
    roc_auc: float
    pr_auc: float
    precision: float
    recall: float
    f1: float
    threshold: float
    positives: int
    rows: int


def evaluate(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Evaluation:
    labels = np.asarray(labels).astype(bool)
    alerts = scores > threshold
    tp = int((alerts & labels).sum())
    precision = tp / int(alerts.sum()) if alerts.any() else 0.0
    recall = tp / int(labels.sum()) if labels.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return Evaluation(
        roc_auc=roc_auc(labels, scores),
        pr_auc=average_precision(labels, scores),
        precision=precision,
        recall=recall,
        f1=f1,
        threshold=threshold,
        positives=int(labels.sum()),
        rows=len(labels),
    )


def plot_curves(path: Path, labels: np.ndarray, scores: np.ndarray, result: Evaluation) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = np.asarray(labels).astype(bool)
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(labels[order])
    fp = np.cumsum(~labels[order])
    tpr, fpr = tp / max(labels.sum(), 1), fp / max((~labels).sum(), 1)
    precision = tp / np.arange(1, len(scores) + 1)
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.5))
    roc.plot(np.r_[0, fpr], np.r_[0, tpr])
    roc.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc.set(title=f"ROC (AUC {result.roc_auc:.3f})", xlabel="false positive rate", ylabel="recall")
    pr.plot(tpr, precision)
    pr.set(title=f"precision-recall (AP {result.pr_auc:.3f})", xlabel="recall", ylabel="precision")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)

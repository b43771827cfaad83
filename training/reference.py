"""The drift reference a bundle carries: the training traffic in bins, no raw rows.

The worker and ``anomaly-train`` measure live traffic against it with
:class:`worker.contract.drift.DriftMonitor`.
"""

from __future__ import annotations

import numpy as np

from worker.contract.bundle import DriftReference
from worker.contract.drift import bin_counts

__all__ = ["BINS", "SCORE_TAIL_QUANTILE", "build_reference", "quantile_edges"]

BINS = 10
#: The score's reference has one more edge, at this quantile: alerts live in the score's tail,
#: and a growing share of extreme scores is the drift that pages people.
SCORE_TAIL_QUANTILE = 0.99


def quantile_edges(values: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Interior edges of ``bins`` equal-frequency bins of ``values`` (fewer when values tie).

    A value ``x`` falls in bin ``searchsorted(edges, x, side="right")``: bin 0 below the
    first edge, the last bin from the last edge up.

    >>> quantile_edges(np.arange(101.0), 4).tolist()
    [25.0, 50.0, 75.0]
    >>> quantile_edges(np.array([0.0] * 6 + [1.0] * 4), 4).tolist()
    [0.0, 1.0]
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.empty(0)
    # "lower": every edge is a training value, so discrete values never get an empty bin between.
    return np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1], method="lower"))


def build_reference(X: np.ndarray, scores: np.ndarray, bins: int = BINS) -> DriftReference:
    """The reference a bundle carries: ``X`` the training rows ``[N, D]``, ``scores`` the
    model's scores of held-out normal rows."""
    X = np.asarray(X, dtype=np.float64)
    edges = [quantile_edges(X[:, j], bins) for j in range(X.shape[1])]
    scores = np.asarray(scores, dtype=np.float64)
    tail = np.quantile(scores[np.isfinite(scores)], SCORE_TAIL_QUANTILE, method="lower")
    score_edges = np.unique(np.append(quantile_edges(scores, bins), tail))
    return DriftReference(
        feature_edges=tuple(tuple(e.tolist()) for e in edges),
        feature_counts=tuple(tuple(bin_counts(X[:, j], e).tolist()) for j, e in enumerate(edges)),
        feature_low=tuple(X.min(axis=0).tolist()),
        feature_high=tuple(X.max(axis=0).tolist()),
        score_edges=tuple(score_edges.tolist()),
        score_counts=tuple(bin_counts(np.asarray(scores), score_edges).tolist()),
    )

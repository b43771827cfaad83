"""Turn scores into decisions. Kept apart from scoring so the rule can change alone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.contract.recent_threshold import Judgement

__all__ = ["Threshold"]


@dataclass(frozen=True)
class Threshold:
    """Alert when ``score > value``.

    >>> Threshold(2.0).decide(np.array([1.0, 2.0, 3.0])).tolist()
    [False, False, True]
    """

    value: float
    source: str = "bundle"

    def __post_init__(self) -> None:
        if not (self.value > 0 and np.isfinite(self.value)):
            raise ValueError(f"threshold must be a positive finite number, got {self.value}")

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Boolean mask of the rows that alert (NaN scores alert: a model failure is news)."""
        return ~(scores <= self.value)

    def ratio(self, scores: np.ndarray) -> np.ndarray:
        """``score / threshold``: above 1 alerts, comparable across models."""
        return scores / self.value

    def judge(self, scores: np.ndarray, entities: Sequence[Any] | None = None) -> Judgement:
        """Every row against the one value (``entities`` do not matter to it)."""
        return Judgement(self.decide(scores), np.full(len(scores), self.value))

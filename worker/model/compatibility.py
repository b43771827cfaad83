"""Does the served model fit the traffic? A model whose features the records do not carry
refuses every record: the worker says so, loudly, instead of quietly dead-lettering it all.

After :data:`REFUSED_IN_A_ROW` records in a row refused for their features (none scored in
between), ``/readyz`` answers 503 naming the model, what it expects and what the records
carry, and an ERROR line says what to do (at most one per :data:`LOG_INTERVAL_SECONDS`);
the first scored record clears it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from worker.contract.records import FEATURES_NAMED, DecodedBatch
from worker.observe.health import HealthState

__all__ = ["REFUSED_IN_A_ROW", "SCHEMA_REASONS", "FeatureFit"]

logger = logging.getLogger(__name__)

#: Dead-letter reasons that say the record's features are not the model's.
SCHEMA_REASONS = frozenset({"wrong_feature_count", "missing_feature", "unknown_feature"})
#: This many records in a row refused for their features make the model "refusing all".
REFUSED_IN_A_ROW = 100
LOG_INTERVAL_SECONDS = 300.0
PROBLEM = "model"


class FeatureFit:
    """Counts the records in a row the served model refused for their features."""

    def __init__(self, health: HealthState, clock: Callable[[], float] = time.monotonic) -> None:
        self.health, self.clock = health, clock
        self.in_a_row = 0
        self._logged_at: float | None = None

    def reset(self) -> None:
        """A new model is served: judged anew."""
        self.in_a_row = 0
        self.health.set_problem(PROBLEM, None)
        self._logged_at = None

    def batch(self, version: str, names: tuple[str, ...], decoded: DecodedBatch) -> None:
        """What a batch decoded to under the model ``version`` of features ``names``."""
        if not decoded.invalid and not self.in_a_row:
            return  # the usual batch: nothing refused, nothing to clear
        refused = [bad for bad in decoded.invalid if bad.reason in SCHEMA_REASONS]
        if len(decoded.positions):
            if self.in_a_row >= REFUSED_IN_A_ROW:
                logger.info("model %s scores records again", version)
            self.reset()
            last_scored = int(decoded.positions[-1])
            refused = [bad for bad in refused if bad.position > last_scored]
        self.in_a_row += len(refused)
        if self.in_a_row < REFUSED_IN_A_ROW or not refused:
            return
        shown = ", ".join(names[:FEATURES_NAMED]) + (" ..." if len(names) > FEATURES_NAMED else "")
        problem = (
            f"model {version} refuses every record for its features: it expects "
            f"{len(names)} ({shown}); the last {self.in_a_row} records: "
            f"{refused[-1].reason} ({refused[-1].detail})"
        )
        self.health.set_problem(PROBLEM, problem)
        now = self.clock()
        if self._logged_at is None or now - self._logged_at >= LOG_INTERVAL_SECONDS:
            self._logged_at = now
            logger.error(
                "%s; every one goes to the dead-letter topic. Promote a model of the "
                "producers' features (anomaly-train ... --allow-feature-change) or roll back "
                "(anomaly-train models rollback)",
                problem,
            )

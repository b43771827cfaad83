"""Registering candidates and promoting them through a gate; rollback and pruning.

A candidate becomes current only if it loads (checksum, shapes), its features
match the current model's, and on a recent sample of normal traffic (a) its
alert rate is within a factor of its calibrated rate, or off by no more than chance
explains (its threshold was set on a finite held-out set, the sample is finite), and
(b) its reconstruction error is not worse than the current model's by more than a
margin. Errors are compared in units both models share: squared error of their
expected values, per feature, divided by the sample's own robust spread.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import FitConfig
from training.data import Table
from training.exceptions import TrainingError
from training.fit import build_bundle
from training.model import robust_scaling
from training.publish import WritableRegistry, write_bundle
from training.report import write_report
from worker.contract.bundle import read_metadata
from worker.contract.exceptions import BundleError
from worker.contract.records import feature_change
from worker.contract.registry import Registry
from worker.contract.scoring import Scorer

__all__ = [
    "GateConfig",
    "GateResult",
    "alert_count_tails",
    "gate",
    "promote",
    "prune",
    "register",
    "retain",
    "rollback",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateConfig:
    max_rate_factor: float = 3.0
    """The sample's alert rate must lie within [rate / f, rate * f] of the calibrated rate..."""
    rate_significance: float = 0.001
    """...unless a count that far off has at least this chance (``alert_count_tails``): a
    threshold calibrated on 960 rows at 1% gives 3 or fewer alerts in 1,200 rows 2% of the time."""
    max_error_increase: float = 0.25
    """The candidate's median sample error may exceed the current model's by this fraction."""
    min_expected_alerts: float = 10.0
    """A sample must be large enough to expect this many alerts at the calibrated rate."""
    error_floor: float = 0.05
    """Errors closer than this (squared, in units of the sample's robust spread) count as equal:
    two good models both reconstruct within a few percent of a feature's variance."""

    def __post_init__(self) -> None:
        problems = []
        if not self.max_rate_factor >= 1:
            problems.append(f"--max-rate-factor must be >= 1, got {self.max_rate_factor}")
        if not 0 < self.rate_significance < 1:
            problems.append(f"--rate-significance must be in (0, 1), got {self.rate_significance}")
        if not self.max_error_increase >= 0:
            problems.append(f"--max-error-increase must be >= 0, got {self.max_error_increase}")
        if problems:
            raise TrainingError("; ".join(problems))


@dataclass
class GateResult:
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    measurements: dict[str, Any] = field(default_factory=dict)


def register(
    registry: WritableRegistry,
    table: Table,
    config: FitConfig,
    exclusions: dict[str, int] | None = None,
    trigger: dict[str, Any] | None = None,
) -> str:
    """Train a candidate and add it to the registry (not current yet); ``trigger`` (why it
    was trained, e.g. the drift measured) goes into its report."""
    model_bytes, metadata, result = build_bundle(table, config, exclusions)
    if trigger is not None:
        result.report["trigger"] = trigger

    def write(directory: Path) -> None:
        written = write_bundle(directory, model_bytes, metadata)
        write_report(directory, written, result.report)

    registry.add(metadata.version, write)
    registry.set_status(metadata.version, "candidate")
    logger.info("registered candidate %s in %s", metadata.version, registry.root)
    return metadata.version


def sample_error(
    scorer: Scorer,
    X: np.ndarray,
    spread: np.ndarray,
    entities: Sequence[str | None] | None = None,
) -> float:
    """Median over rows of the mean squared, spread-normalised error of the model's expectation."""
    _, expected = scorer.score(X, entities).details(np.arange(len(X)))
    return float(np.median((((X - expected) / spread) ** 2).mean(axis=1)))


def gate(
    registry: Registry,
    version: str,
    sample: np.ndarray,
    config: GateConfig,
    device: str = "cpu",
    allow_feature_change: bool = False,
    entities: Sequence[str | None] | None = None,
) -> GateResult:
    """The gate's verdict on ``version`` for a ``sample`` of recent normal traffic (in the
    candidate's features). A candidate of other features than the current model's fails it,
    unless ``allow_feature_change``: then it is judged on its own (the two models' errors
    cannot be compared). With the sample's ``entities``, a model with entity baselines is
    judged as the worker serves it: each sampled row by its entity's baseline."""
    try:
        candidate = Scorer.load(registry.path_of(version), device)
    except BundleError as exc:
        return GateResult(False, [f"does not load: {exc}"])
    meta = candidate.metadata
    reasons: list[str] = []
    measurements: dict[str, Any] = {"sample_rows": len(sample)}
    current = None
    current_version = registry.current()
    if current_version is not None and current_version != version:
        try:
            current = Scorer.load(registry.path_of(current_version), device)
        except BundleError as exc:
            logger.warning(
                "current model %s does not load (%s); gating without it", current_version, exc
            )
    change = feature_change(current.metadata.feature_names, meta.feature_names) if current else ""
    if change and allow_feature_change:
        measurements["feature_change"] = change
        current = None  # nothing to compare the sample error with
    elif change:
        reasons.append(f"features differ from the current model's ({change})")
    if sample.ndim != 2 or sample.shape[1] != meta.n_features:
        reasons.append(
            f"the sample has shape {sample.shape}, the model takes {meta.n_features} features"
        )
        return GateResult(False, reasons, measurements)
    X = np.ascontiguousarray(sample, dtype=np.float32)
    expected_rate = meta.calibration.expected_alert_rate
    alerts = int((candidate.score(X, entities).scores > meta.threshold).sum())
    rate = alerts / len(X)
    fewer, more = alert_count_tails(
        alerts, len(X), expected_rate, meta.calibration.calibration_rows
    )
    measurements.update(
        alert_rate=rate,
        expected_alert_rate=expected_rate,
        alert_rate_chance=min(fewer, more),
    )
    needed = int(np.ceil(config.min_expected_alerts / max(expected_rate, 1e-9)))
    if len(X) < needed:
        reasons.append(
            f"sample too small: {len(X)} rows, need {needed} "
            f"to check a {expected_rate:.4f} alert rate"
        )
    else:
        low, high = expected_rate / config.max_rate_factor, expected_rate * config.max_rate_factor
        chance = fewer if rate < low else more
        if not low <= rate <= high and chance < config.rate_significance:
            reasons.append(
                f"alert rate {rate:.4f} on the sample ({alerts} of {len(X)} rows) is outside "
                f"[{low:.4f}, {high:.4f}], with a chance of {chance:.2g} of being that far off "
                f"given {meta.calibration.calibration_rows} calibration rows"
            )
    if current is not None and not reasons:
        _, spread = robust_scaling(X)
        new = sample_error(candidate, X, spread, entities)
        old = sample_error(current, X, spread, entities)
        measurements.update(
            sample_error=new, current_sample_error=old, current_version=current_version
        )
        if new > old * (1 + config.max_error_increase) and new - old > config.error_floor:
            reasons.append(
                f"median sample error {new:.4g} is worse than the current model's {old:.4g} "
                f"by more than {config.max_error_increase:.0%}"
            )
    return GateResult(not reasons, reasons, measurements)


def alert_count_tails(
    alerts: int, rows: int, rate: float, calibration_rows: int
) -> tuple[float, float]:
    """P(count <= alerts), P(count >= alerts) for a model with this calibrated alert rate.

    A threshold set on ``calibration_rows`` held-out rows at ``rate`` is itself uncertain:
    the share of new normal rows above the (conformal) quantile is Beta(a, b) distributed
    with a = rate * (m + 1), b = (1 - rate) * (m + 1). The count of alerts among ``rows``
    new rows is then beta-binomial; the gate judges a sample's count against that, not
    against a binomial that pretends the threshold is exact.
    """
    if rows <= 0:
        return 1.0, 1.0
    m = calibration_rows if calibration_rows > 0 else 10**9  # unknown: treat as exact
    a = max(rate * (m + 1), 0.5)
    b = max((1.0 - rate) * (m + 1), 0.5)
    k = torch.arange(rows + 1, dtype=torch.float64)
    log_pmf = (  # log C(rows, k) + log B(k + a, rows - k + b) - log B(a, b)
        math.lgamma(rows + 1)
        - torch.lgamma(k + 1)
        - torch.lgamma(rows - k + 1)
        + torch.lgamma(k + a)
        + torch.lgamma(rows - k + b)
        - math.lgamma(rows + a + b)
        - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    )
    fewer = float(torch.logsumexp(log_pmf[: alerts + 1], 0).exp())
    more = float(torch.logsumexp(log_pmf[alerts:], 0).exp())
    return min(fewer, 1.0), min(more, 1.0)


def promote(
    registry: WritableRegistry,
    version: str,
    sample: np.ndarray | None,
    config: GateConfig,
    force: bool = False,
    device: str = "cpu",
    allow_feature_change: bool = False,
    sample_entities: Sequence[str | None] | None = None,
) -> GateResult:
    """Make ``version`` current if it passes the gate (or ``force``); record the outcome.

    A version whose features differ from the current model's is refused, also with
    ``force``, unless ``allow_feature_change``: running workers serve one feature schema and
    refuse such a model, and a restarted worker would dead-letter every record the producers
    send until they send the new features.
    """
    registry.path_of(version)
    if version not in registry.versions():
        raise BundleError(f"version {version} is not registered in {registry.root}")
    change = _feature_change(registry, version)
    if change and not allow_feature_change:
        result = GateResult(
            False,
            [
                f"its features differ from the current model's ({change}); running workers "
                "refuse it and restarted ones would dead-letter the producers' records: "
                "promote it with --allow-feature-change once the producers send its features"
            ],
        )
    elif force:
        Scorer.load(registry.path_of(version), device)  # still refuse what cannot load
        result = GateResult(True, ["forced: gate skipped"])
    elif sample is None:
        raise BundleError("promotion needs a sample of recent normal traffic (or --force)")
    else:
        result = gate(
            registry, version, sample, config, device, allow_feature_change, sample_entities
        )
    if result.accepted:
        registry.set_status(
            version, "promoted", measurements=result.measurements, notes=result.reasons
        )
        registry.set_current(version, "forced" if force else "passed the gate")
        logger.info("promoted %s to current", version)
    else:
        registry.set_status(
            version, "rejected", reasons=result.reasons, measurements=result.measurements
        )
        logger.warning("rejected %s: %s", version, "; ".join(result.reasons))
    return result


def _feature_change(registry: Registry, version: str) -> str:
    """How ``version``'s features differ from the current model's ("" if they do not, or if
    nothing is current or readable)."""
    current = registry.current()
    if current is None or current == version:
        return ""
    try:
        served = read_metadata(registry.path_of(current)).feature_names
    except BundleError:
        return ""  # an unreadable current model is the gate's to report
    return feature_change(served, read_metadata(registry.path_of(version)).feature_names)


def rollback(registry: WritableRegistry) -> str:
    """Make the previously current version current again."""
    current = registry.current()
    available = set(registry.versions())
    for entry in reversed(registry.history()):
        version = entry["version"]
        if version != current and version in available:
            registry.set_current(version, f"rollback from {current}")
            registry.set_status(version, "promoted", notes=[f"rollback from {current}"])
            if current is not None:
                registry.set_status(current, "rolled_back")
            return version
    raise BundleError("no earlier current version to roll back to")


def prune(registry: WritableRegistry, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` versions; never the current one or the rollback target."""
    if keep < 1:
        raise BundleError("keep must be at least 1")
    current = registry.current()
    protected = {current}
    previous = [h["version"] for h in registry.history() if h["version"] != current]
    if previous:
        protected.add(previous[-1])
    versions = registry.versions()
    removable = [v for v in versions[: max(len(versions) - keep, 0)] if v not in protected]
    for version in removable:
        registry.remove(version)
    return removable


def retain(registry: WritableRegistry, keep: int) -> list[str]:
    """Automatic retention after a retraining cycle: what ``prune --keep`` does, and more.

    Rejected candidates are removed except the newest (its report says why it was
    rejected); then all but the newest ``keep`` versions go. The current version and
    its rollback target are never removed.
    """
    current = registry.current()
    previous = [h["version"] for h in registry.history() if h["version"] != current]
    protected = {current, previous[-1] if previous else None}
    rejected = [v for v in registry.versions() if registry.status(v).get("state") == "rejected"]
    removed = [v for v in rejected[:-1] if v not in protected]
    for version in removed:
        registry.remove(version)
    return removed + prune(registry, keep)

"""Fit an autoencoder on normal rows, calibrate its threshold, write a model bundle."""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.baselines import build_entity_detector
from training.config import FitConfig
from training.data import Table
from training.detector import COMPONENTS, DetectorModule, TailLookup, neighbour_scaling
from training.exceptions import TrainingError
from training.model import EnsembleModule, ScoringModule
from training.optimise import ERROR_FLOOR, fit_ensemble, layer_widths, scores_of
from training.publish import write_bundle
from training.reference import build_reference
from worker.contract.bundle import BundleMetadata, DriftReference, ThresholdCalibration
from worker.contract.scoring import BaselineRouter

__all__ = [
    "FitResult",
    "build_bundle",
    "calibrate",
    "fit_bundle",
    "train",
]

logger = logging.getLogger(__name__)

MIN_ROWS = 20
MAD_TO_SIGMA = 1.4826
COMPONENT_WEIGHTS = {"reconstruction": 0.2, "neighbours": 0.6, "tails": 0.2}
"""How the default ``combined`` score weighs its components (``DetectorModule``)."""
COMPONENT_QUANTILE = 0.99


@dataclass
class FitResult:
    module: torch.jit.ScriptModule
    threshold: float
    calibration: ThresholdCalibration
    report: dict[str, Any] = field(default_factory=dict)
    drift_reference: DriftReference | None = None
    baselines: tuple[str, ...] = ()
    """Entities with their own baseline (``--per-entity``), in the module's index order."""


def calibrate(scores: np.ndarray, config: FitConfig) -> tuple[float, ThresholdCalibration]:
    """A threshold from held-out normal scores, and how it was chosen."""
    scores = np.asarray(scores, dtype=np.float64)
    if config.threshold_method == "mad":
        median = float(np.median(scores))
        mad = float(np.median(np.abs(scores - median))) * MAD_TO_SIGMA
        threshold = median + config.mad_k * max(mad, 1e-12)
    else:
        # The (1 - rate) * (n + 1)-th smallest held-out score (interpolated): a new row from
        # the same traffic exceeds it with probability ``rate`` exactly (the conformal
        # quantile). Plain interpolation gave 1.2x the target on a few hundred rows.
        threshold = float(np.quantile(scores, 1.0 - config.target_alert_rate, method="weibull"))
    threshold = max(threshold, 1e-12)
    realised = float((scores > threshold).mean())
    return threshold, ThresholdCalibration(
        method=config.threshold_method,
        target_alert_rate=config.target_alert_rate
        if config.threshold_method == "quantile"
        else realised,
        calibration_rows=len(scores),
        realised_alert_rate=realised,
        k=config.mad_k if config.threshold_method == "mad" else None,
    )


def train(
    X: np.ndarray, config: FitConfig, entities: Sequence[str | None] | None = None
) -> FitResult:
    """Train on ``X`` (normal rows) and calibrate the threshold on a held-out split; with
    ``config.per_entity``, ``entities`` (each row's) get baselines of their own."""
    config.validate()
    n, d = X.shape
    if n < MIN_ROWS:
        raise TrainingError(f"need at least {MIN_ROWS} normal rows to train, got {n}")
    if config.per_entity and (entities is None or len(entities) != n):
        raise TrainingError(
            "--per-entity needs each row's entity: an 'entity' column in the file, or keyed "
            "records from Kafka"
        )
    if config.loss == "bce" and (X.min() < 0 or X.max() > 1):
        raise TrainingError("loss 'bce' needs every feature in [0, 1]; use 'mse' or rescale")
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_val = max(round(n * config.validation_fraction), 10)
    X_val, X_train = X[order[:n_val]], X[order[n_val:]]
    train_entities = val_entities = None
    if entities is not None:
        train_entities = [entities[i] for i in order[n_val:].tolist()]
        val_entities = [entities[i] for i in order[:n_val].tolist()]

    model, history, best_epoch = fit_ensemble(X_train, X_val, config)
    trimmed = 0
    if config.trim_fraction > 0:
        train_scores = scores_of(model, X_train)
        keep = train_scores <= np.quantile(train_scores, 1.0 - config.trim_fraction)
        trimmed = int((~keep).sum())
        logger.info("robust pass: dropping the %d worst-reconstructed rows and refitting", trimmed)
        X_train = X_train[keep]
        if train_entities is not None:
            train_entities = [e for e, k in zip(train_entities, keep.tolist(), strict=True) if k]
        model, history, best_epoch = fit_ensemble(X_train, X_val, config)

    autoencoders = model
    score_report: dict[str, Any] = {"method": config.score}
    module: torch.nn.Module = autoencoders
    if config.score == "combined":
        module, score_report = _detector(autoencoders, X_train, X_val, config)
    chosen: tuple[str, ...] = ()
    if config.per_entity:
        assert isinstance(module, DetectorModule) and train_entities and val_entities
        weights = np.array([COMPONENT_WEIGHTS[c] for c in COMPONENTS], dtype=np.float32)
        baselines = build_entity_detector(
            module, X_train, train_entities, X_val, val_entities, weights, config
        )
        score_report["baselines"] = baselines.report if baselines else {"entities": 0}
        if baselines is not None:
            module, chosen = baselines.module, baselines.entities
            with torch.no_grad():
                index = torch.as_tensor(BaselineRouter(chosen).route(val_entities))
                routed = baselines.module.routed(torch.as_tensor(X_val), index)
            val_scores = routed[0].numpy().astype(np.float64)
    if not chosen:
        val_scores = scores_of(module, X_val)
    threshold, calibration = calibrate(val_scores, config)
    with torch.no_grad():
        _, val_errors, _ = autoencoders(torch.as_tensor(X_val))
    hidden, latent = layer_widths(d, config)
    first = autoencoders.members[0]
    assert isinstance(first, ScoringModule)
    report = {
        "config": {k: v for k, v in asdict(config).items() if k != "progress"},
        "rows_train": len(X_train),
        "rows_validation": len(X_val),
        "rows_trimmed": trimmed,
        "n_features": d,
        "hidden": list(hidden),
        "latent": latent,
        "compression_ratio": d / latent,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_val_loss": min(h["val_loss"] for h in history),
        "history": history,
        "validation_scores": val_scores.tolist(),
        "per_feature_validation_error": val_errors.mean(dim=0).tolist(),
        "ensemble": config.ensemble,
        "scaling": "none" if config.loss == "bce" else config.scaling,
        "feature_center": first.center.tolist(),
        "feature_scale": first.scale.tolist(),
        "score": score_report,
        "seed": config.seed,
    }
    logger.info(
        "trained %d epochs (best %d); threshold %.4g by %s, held-out alert rate %.4f",
        len(history),
        best_epoch,
        threshold,
        calibration.method,
        calibration.realised_alert_rate,
    )
    # What the worker compares live traffic with: the training rows' deciles per feature and
    # the held-out rows' score deciles.
    reference = build_reference(X, val_scores)
    return FitResult(
        torch.jit.script(module), threshold, calibration, report, reference, baselines=chosen
    )


def _detector(
    autoencoders: EnsembleModule, X_train: np.ndarray, X_val: np.ndarray, config: FitConfig
) -> tuple[DetectorModule, dict[str, Any]]:
    """The combined score: remember normal traffic, put every component on one scale.

    A seeded sample of the training rows (at most ``sample_rows``) is the tails' reference.
    Less the ``memory_trim`` share whose values lie furthest out in their features' tails,
    ``memory_rows`` of it (shuffled, seeded; fewer if the sample is smaller) in robust units
    (median, IQR) are the memory the neighbour distance is measured against, in
    ``memory_subsets`` equal subsets. Robust units: anomalies left in the training traffic
    widen a standard deviation, not an interquartile range. Each component is scaled by its
    99th percentile on the held-out rows, which none of this has seen.
    """
    rng = np.random.default_rng(config.seed)
    sample = X_train
    if len(sample) > config.sample_rows:
        sample = sample[np.sort(rng.choice(len(sample), config.sample_rows, replace=False))]
    center, scale = neighbour_scaling(X_train, config.neighbour_scaling)
    standardised = ((sample - center) / scale).astype(np.float32)
    weights = np.array([COMPONENT_WEIGHTS[c] for c in COMPONENTS], dtype=np.float32)
    lookup = TailLookup(sample)

    def build(memory: np.ndarray, subsets: int, component_scale: np.ndarray) -> DetectorModule:
        return DetectorModule(
            autoencoders, center, scale, memory, lookup, subsets, component_scale, weights
        ).eval()

    with torch.no_grad():
        tails = lookup(torch.as_tensor(sample)).sum(dim=1).numpy()
    keep = tails <= np.quantile(tails, 1.0 - config.memory_trim)
    if keep.sum() < config.memory_subsets:
        keep = np.ones(len(sample), dtype=bool)
    kept = standardised[keep][rng.permutation(int(keep.sum()))]
    subsets = min(config.memory_subsets, len(kept))
    memory = kept[: min(config.memory_rows, len(kept)) // subsets * subsets]
    with torch.no_grad():
        unscaled = build(memory, subsets, np.ones(len(COMPONENTS), dtype=np.float32))
        parts = unscaled.components(torch.as_tensor(X_val))[0].numpy()
    component_scale = np.maximum(
        np.quantile(parts.astype(np.float64), COMPONENT_QUANTILE, axis=0), ERROR_FLOOR
    ).astype(np.float32)
    module = build(memory, subsets, component_scale)
    report = {
        "method": "combined",
        "weights": dict(COMPONENT_WEIGHTS),
        "component_scale": dict(zip(COMPONENTS, component_scale.tolist(), strict=True)),
        "memory_rows": len(memory),
        "memory_subsets": subsets,
        "sample_rows": len(sample),
        "sample_trimmed": int((~keep).sum()),
    }
    return module, report


def build_bundle(
    table: Table, config: FitConfig, exclusions: dict[str, int] | None = None
) -> tuple[bytes, BundleMetadata, FitResult]:
    """Train on the normal rows of ``table``; return the TorchScript bytes and the metadata."""
    excluded = {**table.dropped, **(exclusions or {})}
    if table.y is not None:
        anomalous = table.y != 0
        excluded["labelled_anomaly"] = excluded.get("labelled_anomaly", 0) + int(anomalous.sum())
        table = table.take(~anomalous)
    X = np.ascontiguousarray(table.X, dtype=np.float32)
    result = train(X, config, table.entities if config.per_entity else None)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is the bundle format
        torch.jit.save(result.module, buffer)
    model_bytes = buffer.getvalue()
    created = datetime.now(UTC)
    digest = hashlib.sha256(model_bytes).hexdigest()
    version = f"{created:%Y%m%dT%H%M%S}{created.microsecond // 1000:03d}Z-{digest[:8]}"
    result.report["rows_excluded"] = excluded
    training = {k: v for k, v in result.report.items() if k not in ("history", "validation_scores")}
    metadata = BundleMetadata(
        version=version,
        feature_names=table.feature_names,
        threshold=result.threshold,
        calibration=result.calibration,
        training=training,
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        torch_version=torch.__version__,
        created_at=created.isoformat(),
        drift_reference=result.drift_reference,
        baselines=result.baselines,
    )
    return model_bytes, metadata, result


def fit_bundle(
    table: Table,
    output: Path,
    config: FitConfig,
    exclusions: dict[str, int] | None = None,
    after_write: Callable[[Path, BundleMetadata, FitResult], None] | None = None,
) -> BundleMetadata:
    """Train and write a bundle directory at ``output``."""
    model_bytes, metadata, result = build_bundle(table, config, exclusions)
    written = write_bundle(output, model_bytes, metadata)
    if after_write is not None:
        after_write(output, written, result)
    return written

"""Fit an autoencoder on normal rows, calibrate its threshold, write a model bundle."""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from training.data import Table
from training.exceptions import TrainingError
from training.model import AutoEncoder, ScoringModule, default_widths, robust_scaling
from worker.bundle import BundleMetadata, ThresholdCalibration, write_bundle

__all__ = ["FitConfig", "FitResult", "fit_bundle", "train"]

logger = logging.getLogger(__name__)

MIN_ROWS = 20


@dataclass(frozen=True)
class FitConfig:
    target_alert_rate: float = 0.01
    """Fraction of held-out normal rows that should score above the threshold."""
    validation_fraction: float = 0.2
    epochs: int = 200
    patience: int = 15
    batch_size: int = 256
    learning_rate: float = 1e-3
    hidden: int | None = None
    latent: int | None = None
    seed: int = 0
    device: str = "cpu"


@dataclass
class FitResult:
    module: torch.jit.ScriptModule
    threshold: float
    calibration: ThresholdCalibration
    report: dict


def train(X: np.ndarray, config: FitConfig) -> FitResult:
    """Train on ``X`` (normal rows only) and calibrate the threshold on a held-out split."""
    if not 0 < config.target_alert_rate < 0.5:
        raise TrainingError(
            f"target alert rate must be in (0, 0.5), got {config.target_alert_rate}"
        )
    n, d = X.shape
    if n < MIN_ROWS:
        raise TrainingError(f"need at least {MIN_ROWS} normal rows to train, got {n}")
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    order = rng.permutation(n)
    n_val = max(round(n * config.validation_fraction), 10)
    val_idx, train_idx = order[:n_val], order[n_val:]
    X_train, X_val = X[train_idx], X[val_idx]

    center, scale = robust_scaling(X_train)
    default_hidden, default_latent = default_widths(d)
    hidden = config.hidden or default_hidden
    latent = config.latent or default_latent
    device = torch.device(config.device)
    model = ScoringModule(AutoEncoder(d, hidden, latent), center, scale).to(device)
    optimiser = torch.optim.Adam(model.autoencoder.parameters(), lr=config.learning_rate)

    train_t = torch.as_tensor(X_train, device=device)
    val_t = torch.as_tensor(X_val, device=device)
    best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    for epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(len(train_t), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(train_t), config.batch_size):
            batch = train_t[perm[start : start + config.batch_size]]
            score, _, _ = model(batch)
            loss = score.mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            val_loss = float(model(val_t)[0].mean())
        history.append({"epoch": epoch, "train_loss": total / len(train_t), "val_loss": val_loss})
        if val_loss < best_loss - 1e-7:
            best_loss, best_state, best_epoch, stale = (
                val_loss,
                copy.deepcopy(model.state_dict()),
                epoch,
                0,
            )
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval().cpu()

    with torch.no_grad():
        val_scores = model(torch.as_tensor(X_val))[0].numpy().astype(np.float64)
    threshold = float(np.quantile(val_scores, 1.0 - config.target_alert_rate, method="higher"))
    threshold = max(threshold, 1e-12)
    realised = float((val_scores > threshold).mean())
    calibration = ThresholdCalibration(
        method="quantile",
        target_alert_rate=config.target_alert_rate,
        calibration_rows=len(val_scores),
        realised_alert_rate=realised,
    )
    scripted = torch.jit.script(model)
    report = {
        "rows_train": len(train_idx),
        "rows_validation": len(val_idx),
        "n_features": d,
        "hidden": hidden,
        "latent": latent,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "best_val_loss": best_loss,
        "fit_seconds": round(time.perf_counter() - started, 3),
        "seed": config.seed,
        "feature_center": center.tolist(),
        "feature_scale": scale.tolist(),
        "validation_score_quantiles": {
            str(q): float(np.quantile(val_scores, q)) for q in (0.5, 0.9, 0.99)
        },
    }
    logger.info(
        "trained %d epochs (best %d, val loss %.4g); threshold %.4g, realised alert rate %.4f",
        len(history),
        best_epoch,
        best_loss,
        threshold,
        realised,
    )
    return FitResult(scripted, threshold, calibration, report)


def fit_bundle(table: Table, output: Path, config: FitConfig) -> BundleMetadata:
    """Train on the normal rows of ``table`` and write a bundle to ``output``."""
    X = table.X
    excluded = dict(table.dropped)
    if table.y is not None:
        anomalous = table.y != 0
        excluded["labelled_anomaly"] = int(anomalous.sum())
        X = X[~anomalous]
    result = train(np.ascontiguousarray(X, dtype=np.float32), config)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is the bundle format
        torch.jit.save(result.module, buffer)
    model_bytes = buffer.getvalue()
    created = datetime.now(UTC)
    version = f"{created:%Y%m%dT%H%M%SZ}-{hashlib.sha256(model_bytes).hexdigest()[:8]}"
    metadata = BundleMetadata(
        version=version,
        feature_names=table.feature_names,
        threshold=result.threshold,
        calibration=result.calibration,
        training={**result.report, "rows_excluded": excluded},
        sha256="",
        torch_version=torch.__version__,
        created_at=created.isoformat(),
    )
    return write_bundle(output, model_bytes, metadata)

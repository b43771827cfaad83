"""Fit an autoencoder on normal rows, calibrate its threshold, write a model bundle."""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data import Table
from training.exceptions import TrainingError
from training.model import (
    ACTIVATIONS,
    COMPONENTS,
    AutoEncoder,
    DetectorModule,
    EnsembleModule,
    ScoringModule,
    TailLookup,
    default_widths,
    minmax_scaling,
    robust_scaling,
)
from worker.bundle import BundleMetadata, DriftReference, ThresholdCalibration, write_bundle
from worker.drift import build_reference

__all__ = [
    "FitConfig",
    "FitResult",
    "build_bundle",
    "calibrate",
    "fit_bundle",
    "train",
]

logger = logging.getLogger(__name__)

MIN_ROWS = 20
MAD_TO_SIGMA = 1.4826
ERROR_FLOOR = 1e-6
SCORES = ("combined", "reconstruction")
COMPONENT_WEIGHTS = {"reconstruction": 0.2, "neighbours": 0.6, "tails": 0.2}
"""How the default ``combined`` score weighs its components (``DetectorModule``)."""
COMPONENT_QUANTILE = 0.99
CONSTANT_RELATIVE_SCALE = 1e-3


@dataclass(frozen=True)
class FitConfig:
    """Everything ``anomaly-train fit`` can set; the defaults need no tuning."""

    target_alert_rate: float = 0.01
    """quantile rule: fraction of held-out normal rows that should score above the threshold."""
    threshold_method: str = "quantile"
    """``quantile`` (target alert rate) or ``mad`` (median + k * MAD of held-out scores)."""
    mad_k: float = 5.0
    """k of the ``mad`` rule."""
    validation_fraction: float = 0.2
    epochs: int = 200
    patience: int = 15
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    hidden: tuple[int, ...] | None = None
    """Encoder widths, e.g. (128, 64, 32); default one layer of ~2 x D."""
    latent: int | None = None
    activation: str = "relu"
    dropout: float = 0.0
    loss: str = "mse"
    """``mse`` or ``bce`` (features in [0, 1])."""
    noise: float = 0.0
    """Denoising: std of Gaussian noise added to scaled inputs while training."""
    trim_fraction: float = 0.0
    """Robust pass: drop this fraction of worst-reconstructed training rows and refit."""
    ensemble: int = 1
    """Autoencoders averaged (different seeds); each feature's error is normalised first."""
    scaling: str = "robust"
    """Input scaling frozen into the bundle: ``minmax`` (range) or ``robust`` (median, IQR)."""
    score: str = "combined"
    """``combined``: reconstruction error + distance to remembered normal rows + feature tails
    (``DetectorModule``); ``reconstruction``: the autoencoders' error alone."""
    memory_rows: int = 1024
    """combined score: normal training rows the bundle remembers for the neighbour term (its
    cost per record grows with them: 0.6-1.0 us at 512 rows, 1.1-1.3 at 1,024, 8 features, CPU)."""
    memory_subsets: int = 4
    """combined score: the memory is split into this many random subsets; the neighbour term is
    half the distance to the nearest remembered row, half the average over the subsets of the
    distance to each one's nearest row (1: plain nearest-neighbour distance)."""
    sample_rows: int = 4096
    """combined score: training rows sampled (seeded) for the tails and the memory."""
    memory_trim: float = 0.05
    """combined score: share of sampled rows with the most extreme feature values left out of
    the memory, so anomalies in the training traffic do not become "normal" neighbours."""
    seed: int = 0
    device: str = "cpu"
    progress: bool = False

    def validate(self) -> None:
        problems = []
        if self.threshold_method not in ("quantile", "mad"):
            problems.append(
                f"threshold method must be quantile or mad, got {self.threshold_method!r}"
            )
        if not 0 < self.target_alert_rate < 0.5:
            problems.append(f"target alert rate must be in (0, 0.5), got {self.target_alert_rate}")
        if self.loss not in ("mse", "bce"):
            problems.append(f"loss must be mse or bce, got {self.loss!r}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {sorted(ACTIVATIONS)}")
        if not 0 <= self.dropout < 1 or not 0 <= self.trim_fraction < 0.5 or self.noise < 0:
            problems.append("dropout in [0, 1), trim fraction in [0, 0.5) and noise >= 0 please")
        if self.hidden is not None and (not self.hidden or min(self.hidden) < 1):
            problems.append(f"hidden widths must be positive, got {self.hidden}")
        if self.scaling not in ("minmax", "robust"):
            problems.append(f"scaling must be minmax or robust, got {self.scaling!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.mad_k <= 0 or self.ensemble < 1:
            problems.append("epochs, batch size and k must be positive")
        if self.score not in SCORES:
            problems.append(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if not 1 <= self.memory_subsets <= self.memory_rows <= self.sample_rows:
            problems.append(
                "need 1 <= memory subsets <= memory rows <= sample rows, got "
                f"{self.memory_subsets}, {self.memory_rows}, {self.sample_rows} "
                "(--memory-subsets, --memory-rows, --sample-rows)"
            )
        if not 0 <= self.memory_trim < 0.5:
            problems.append(f"memory trim must be in [0, 0.5), got {self.memory_trim}")
        if problems:
            raise TrainingError("; ".join(problems))


@dataclass
class FitResult:
    module: torch.jit.ScriptModule
    threshold: float
    calibration: ThresholdCalibration
    report: dict[str, Any] = field(default_factory=dict)
    drift_reference: DriftReference | None = None


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


def train(X: np.ndarray, config: FitConfig) -> FitResult:
    """Train on ``X`` (normal rows) and calibrate the threshold on a held-out split."""
    config.validate()
    n, d = X.shape
    if n < MIN_ROWS:
        raise TrainingError(f"need at least {MIN_ROWS} normal rows to train, got {n}")
    if config.loss == "bce" and (X.min() < 0 or X.max() > 1):
        raise TrainingError("loss 'bce' needs every feature in [0, 1]; use 'mse' or rescale")
    rng = np.random.default_rng(config.seed)
    order = rng.permutation(n)
    n_val = max(round(n * config.validation_fraction), 10)
    X_val, X_train = X[order[:n_val]], X[order[n_val:]]

    model, history, best_epoch = _fit_ensemble(X_train, X_val, config)
    trimmed = 0
    if config.trim_fraction > 0:
        train_scores = _scores(model, X_train)
        keep = train_scores <= np.quantile(train_scores, 1.0 - config.trim_fraction)
        trimmed = int((~keep).sum())
        logger.info("robust pass: dropping the %d worst-reconstructed rows and refitting", trimmed)
        X_train = X_train[keep]
        model, history, best_epoch = _fit_ensemble(X_train, X_val, config)

    autoencoders = model
    score_report: dict[str, Any] = {"method": config.score}
    module: torch.nn.Module = autoencoders
    if config.score == "combined":
        module, score_report = _detector(autoencoders, X_train, X_val, config)
    val_scores = _scores(module, X_val)
    threshold, calibration = calibrate(val_scores, config)
    with torch.no_grad():
        _, val_errors, _ = autoencoders(torch.as_tensor(X_val))
    hidden, latent = _shape(d, config)
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
    return FitResult(torch.jit.script(module), threshold, calibration, report, reference)


def _fit_ensemble(
    X_train: np.ndarray, X_val: np.ndarray, config: FitConfig
) -> tuple[EnsembleModule, list[dict[str, float]], int]:
    """``config.ensemble`` autoencoders (seeds seed, seed+1, ...) combined on one scale."""
    members, histories, best_epochs = [], [], []
    for k in range(config.ensemble):
        member, history, best_epoch = _fit_model(
            X_train, X_val, replace(config, seed=config.seed + k)
        )
        members.append(member)
        histories.append(history)
        best_epochs.append(best_epoch)
    scales = []
    X_t = torch.as_tensor(X_train)
    with torch.no_grad():
        for member in members:
            errors = member(X_t)[1].numpy().astype(np.float64)
            per_feature = np.maximum(errors.mean(axis=0), ERROR_FLOOR)
            typical = float(np.median((errors / per_feature).mean(axis=1)))
            scales.append(per_feature * max(typical, ERROR_FLOOR))
    return EnsembleModule(members, np.asarray(scales)).eval(), histories[0], best_epochs[0]


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
    center, scale = neighbour_scaling(X_train)
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


def neighbour_scaling(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Center and scale of the neighbour space: median and IQR / 1.349 (the standard deviation
    of normal data); a column whose IQR is 0 (mostly one value) uses its standard deviation,
    and a column constant in training counts a change of 0.1% of its value (or of 0.001) as
    one unit, so a never-seen value there is far from every remembered row."""
    X = np.asarray(X, dtype=np.float64)
    constant = CONSTANT_RELATIVE_SCALE * np.maximum(np.abs(np.median(X, axis=0)), 1.0)
    return robust_scaling(X, constant)


def _shape(d: int, config: FitConfig) -> tuple[tuple[int, ...], int]:
    default_hidden, default_latent = default_widths(d)
    return config.hidden or default_hidden, config.latent or default_latent


def _fit_model(
    X_train: np.ndarray, X_val: np.ndarray, config: FitConfig
) -> tuple[ScoringModule, list[dict[str, float]], int]:
    torch.manual_seed(config.seed)
    d = X_train.shape[1]
    hidden, latent = _shape(d, config)
    bce = config.loss == "bce"
    if bce:
        center, scale = np.zeros(d, np.float32), np.ones(d, np.float32)
    else:
        center, scale = (minmax_scaling if config.scaling == "minmax" else robust_scaling)(X_train)
    autoencoder = AutoEncoder(
        d, hidden, latent, config.activation, config.dropout, sigmoid_output=bce
    )
    device = torch.device(config.device)
    model = ScoringModule(autoencoder, center, scale, bce=bce).to(device)
    optimiser = torch.optim.AdamW(
        model.autoencoder.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    train_t = torch.as_tensor(X_train, device=device)
    val_t = torch.as_tensor(X_val, device=device)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
    history: list[dict[str, float]] = []
    progress = _Progress(config.epochs) if config.progress else None
    for epoch in range(config.epochs):
        model.train()
        perm = torch.randperm(len(train_t), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(train_t), config.batch_size):
            batch = train_t[perm[start : start + config.batch_size]]
            if config.noise > 0:
                noise = torch.randn(batch.shape, generator=generator).to(device)
                noisy = batch + noise * config.noise * model.scale
                loss = _loss(model, noisy, batch)
            else:
                loss = model(batch)[0].mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        model.eval()
        with torch.no_grad():
            val_loss = float(model(val_t)[0].mean())
        history.append({"epoch": epoch, "train_loss": total / len(train_t), "val_loss": val_loss})
        if progress is not None:
            progress.update(epoch, val_loss)
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
    if progress is not None:
        progress.done()
    assert best_state is not None
    model.load_state_dict(best_state)
    return model.eval().cpu(), history, best_epoch


def _loss(model: ScoringModule, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Denoising objective: reconstruct the clean rows from noisy ones."""
    reconstruction = model.autoencoder((noisy - model.center) / model.scale)
    target = (clean - model.center) / model.scale
    if model.bce:
        return torch.nn.functional.binary_cross_entropy(
            reconstruction.clamp(1e-6, 1 - 1e-6), target.clamp(0.0, 1.0)
        )
    return ((reconstruction - target) ** 2).mean()


def _scores(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(X))[0].numpy().astype(np.float64)


class _Progress:
    """A one-line progress bar on a terminal, a log line every 20 epochs otherwise."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()

    def update(self, epoch: int, val_loss: float) -> None:
        done = (epoch + 1) / self.epochs
        if self.tty:
            bar = "#" * int(30 * done)
            sys.stderr.write(
                f"\r[{bar:<30}] epoch {epoch + 1}/{self.epochs} val loss {val_loss:.4g}"
            )
            sys.stderr.flush()
        elif (epoch + 1) % 20 == 0:
            logger.info("epoch %d/%d, validation loss %.4g", epoch + 1, self.epochs, val_loss)

    def done(self) -> None:
        if self.tty:
            sys.stderr.write(f"  ({time.monotonic() - self.started:.1f}s)\n")


def build_bundle(
    table: Table, config: FitConfig, exclusions: dict[str, int] | None = None
) -> tuple[bytes, BundleMetadata, FitResult]:
    """Train on the normal rows of ``table``; return the TorchScript bytes and the metadata."""
    X = table.X
    excluded = {**table.dropped, **(exclusions or {})}
    if table.y is not None:
        anomalous = table.y != 0
        excluded["labelled_anomaly"] = excluded.get("labelled_anomaly", 0) + int(anomalous.sum())
        X = X[~anomalous]
    result = train(np.ascontiguousarray(X, dtype=np.float32), config)
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

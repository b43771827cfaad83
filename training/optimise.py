"""Fitting the autoencoders: the epoch loop, early stopping, denoising, ensembles."""

from __future__ import annotations

import copy
import logging
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from training.config import FitConfig
from training.model import (
    AutoEncoder,
    EnsembleModule,
    ScoringModule,
    default_widths,
    minmax_scaling,
    robust_scaling,
)

__all__ = ["ERROR_FLOOR", "fit_ensemble", "layer_widths", "scores_of"]

logger = logging.getLogger(__name__)

#: Errors below this count as this (no feature's error scale is zero).
ERROR_FLOOR = 1e-6


def fit_ensemble(
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


def layer_widths(d: int, config: FitConfig) -> tuple[tuple[int, ...], int]:
    default_hidden, default_latent = default_widths(d)
    return config.hidden or default_hidden, config.latent or default_latent


def _fit_model(
    X_train: np.ndarray, X_val: np.ndarray, config: FitConfig
) -> tuple[ScoringModule, list[dict[str, float]], int]:
    torch.manual_seed(config.seed)
    d = X_train.shape[1]
    hidden, latent = layer_widths(d, config)
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


def scores_of(model: torch.nn.Module, X: np.ndarray) -> np.ndarray:
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

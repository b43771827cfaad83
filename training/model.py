"""The dense autoencoder and the scoring module that goes into a bundle.

:class:`ScoringModule` is what the worker runs: raw float32 features in,
``(score, feature_error, expected)`` out, with the robust scaling frozen inside
so nothing outside the bundle has to know about it.
"""

import numpy as np
import torch
from torch import nn

__all__ = ["AutoEncoder", "ScoringModule", "default_widths", "robust_scaling"]

MIN_SCALE = 1e-6


def default_widths(n_features: int) -> tuple[int, int]:
    """Hidden width and latent size from the number of features."""
    hidden = int(min(max(2 * n_features, 8), 256))
    latent = int(max(1, min(n_features // 2, 64)))
    return hidden, latent


class AutoEncoder(nn.Module):
    """``D -> hidden -> latent -> hidden -> D``: ReLU on the hidden layers, a linear bottleneck."""

    def __init__(self, n_features: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, latent)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_features)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def robust_scaling(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and a robust spread (IQR / 1.349, else std, else 1) per column."""
    center = np.median(X, axis=0)
    q75, q25 = np.percentile(X, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = X.std(axis=0)
    scale = np.where(scale > MIN_SCALE, scale, np.where(std > MIN_SCALE, std, 1.0))
    return center.astype(np.float32), scale.astype(np.float32)


class ScoringModule(nn.Module):
    """Scaling + autoencoder: the bundle's TorchScript module."""

    center: torch.Tensor
    scale: torch.Tensor

    def __init__(self, autoencoder: AutoEncoder, center: np.ndarray, scale: np.ndarray) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = (x - self.center) / self.scale
        reconstruction = self.autoencoder(z)
        error = (z - reconstruction) ** 2
        expected = reconstruction * self.scale + self.center
        return error.mean(dim=1), error, expected

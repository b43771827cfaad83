"""The dense autoencoder and the modules that go into a bundle.

What the worker runs is raw float32 features in, ``(score, feature_error, expected)``
out, with every scaling frozen inside so nothing outside the bundle has to know
about it. :class:`ScoringModule` is one autoencoder with its input scaling,
:class:`EnsembleModule` averages several, and :class:`~training.detector.DetectorModule`
(the default bundle) adds two views of the training traffic to the reconstruction error.
"""

import itertools

import numpy as np
import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "AutoEncoder",
    "EnsembleModule",
    "ScoringModule",
    "default_widths",
    "minmax_scaling",
    "robust_scaling",
]

MIN_SCALE = 1e-6

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def default_widths(n_features: int) -> tuple[tuple[int, ...], int]:
    """One hidden layer of about 2 x D and a latent of D / 2 (the seed articles' shallow shape)."""
    hidden = int(min(max(2 * n_features, 8), 256))
    latent = int(max(1, min(n_features // 2, 64)))
    return (hidden,), latent


class AutoEncoder(nn.Module):
    """``D -> hidden[0] -> ... -> latent -> ... -> hidden[0] -> D`` with a linear bottleneck.

    ``hidden=(128, 64, 32)`` gives the deep shape, ``hidden=(16,)`` the shallow one.
    """

    def __init__(
        self,
        n_features: int,
        hidden: tuple[int, ...],
        latent: int,
        activation: str = "relu",
        dropout: float = 0.0,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        act = ACTIVATIONS[activation]

        def stack(widths: list[int], last: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for a, b in itertools.pairwise(widths):
                layers += [nn.Linear(a, b), act()]
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(widths[-1], last))
            return layers

        self.encoder = nn.Sequential(*stack([n_features, *hidden], latent))
        decoder = stack([latent, *reversed(hidden)], n_features)
        if sigmoid_output:
            decoder.append(nn.Sigmoid())
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def robust_scaling(
    X: np.ndarray, constant_scale: np.ndarray | float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Median and a robust spread (IQR / 1.349, else std, else ``constant_scale``) per column."""
    center = np.median(X, axis=0)
    q75, q25 = np.percentile(X, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = X.std(axis=0)
    scale = np.where(scale > MIN_SCALE, scale, np.where(std > MIN_SCALE, std, constant_scale))
    return center.astype(np.float32), scale.astype(np.float32)


def minmax_scaling(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and range per column (a constant column gets range 1)."""
    low, high = X.min(axis=0), X.max(axis=0)
    span = high - low
    return low.astype(np.float32), np.where(span > MIN_SCALE, span, 1.0).astype(np.float32)


class ScoringModule(nn.Module):
    """Scaling + autoencoder + per-feature error: one member of the bundle's module.

    ``bce`` selects binary cross-entropy per feature (features in [0, 1], no
    scaling, sigmoid output); otherwise squared error in robust-scaled units.
    """

    center: torch.Tensor
    scale: torch.Tensor
    bce: bool

    def __init__(
        self, autoencoder: AutoEncoder, center: np.ndarray, scale: np.ndarray, bce: bool = False
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.bce = bce

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = (x - self.center) / self.scale
        reconstruction = self.autoencoder(z)
        if self.bce:
            p = reconstruction.clamp(1e-6, 1.0 - 1e-6)
            target = z.clamp(0.0, 1.0)
            error = -(target * torch.log(p) + (1.0 - target) * torch.log(1.0 - p))
        else:
            error = (z - reconstruction) ** 2
        expected = reconstruction * self.scale + self.center
        return error.mean(dim=1), error, expected

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` raw features -> ``[B, latent]``: the encoder's output for each row."""
        return self.autoencoder.encoder((x - self.center) / self.scale)


class EnsembleModule(nn.Module):
    """Several scoring modules averaged, each feature's error divided by its training spread.

    ``error_scale[k, j]`` is member k's mean training error on feature j times the median
    of its normalised training score: a feature that is always hard to reconstruct no longer
    dominates the score, and every member's score has median 1 on training rows, so the
    members are averaged on one scale.
    """

    error_scale: torch.Tensor

    def __init__(self, members: list[ScoringModule], error_scale: np.ndarray) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("error_scale", torch.as_tensor(error_scale, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        errors: list[torch.Tensor] = []
        expected: list[torch.Tensor] = []
        for member in self.members:
            _, error, reconstruction = member(x)
            errors.append(error)
            expected.append(reconstruction)
        error = (torch.stack(errors) / self.error_scale.unsqueeze(1)).mean(dim=0)
        return error.mean(dim=1), error, torch.stack(expected).mean(dim=0)

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The members' latent features side by side: ``[B, members x latent]``."""
        latents: list[torch.Tensor] = []
        for member in self.members:
            latents.append(member.encode(x))  # type: ignore[operator]
        return torch.cat(latents, dim=1)

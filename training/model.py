"""The dense autoencoder and the modules that go into a bundle.

What the worker runs is raw float32 features in, ``(score, feature_error, expected)``
out, with every scaling frozen inside so nothing outside the bundle has to know
about it. :class:`ScoringModule` is one autoencoder with its input scaling,
:class:`EnsembleModule` averages several, and :class:`DetectorModule` (the default
bundle) adds two views of the training traffic to the reconstruction error: the
distance to the nearest remembered normal rows and how far out in its own feature's
tail each value lies.
"""

import itertools

import numpy as np
import torch
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "COMPONENTS",
    "AutoEncoder",
    "DetectorModule",
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


def robust_scaling(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and a robust spread (IQR / 1.349, else std, else 1) per column."""
    center = np.median(X, axis=0)
    q75, q25 = np.percentile(X, [75, 25], axis=0)
    scale = (q75 - q25) / 1.349
    std = X.std(axis=0)
    scale = np.where(scale > MIN_SCALE, scale, np.where(std > MIN_SCALE, std, 1.0))
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


COMPONENTS = ("reconstruction", "neighbours", "tails")


class DetectorModule(nn.Module):
    """The default bundle: three views of "how unlike the training traffic is this row".

    - ``reconstruction``: the autoencoders' mean per-feature error (what the alert explains:
      ``feature_error`` and ``expected`` are the autoencoders');
    - ``neighbours``: mean Euclidean distance to the ``k`` nearest rows of ``memory``, a
      sample of normal training rows in standardised units -- what an autoencoder misses
      when it reconstructs a row that lies off the data along a direction it learned;
    - ``tails``: sum over features of ``-log`` of the two-sided empirical tail probability
      of the value among the training rows (``reference``, sorted per feature) -- a value
      further out than anything in training scores ``log(n + 1)`` on that feature.

    Each component is divided by its 99th percentile on held-out normal rows
    (``component_scale``), so 1.0 means "as unusual as the 1% most unusual normal rows",
    and the score is their weighted sum.
    """

    center: torch.Tensor
    scale: torch.Tensor
    memory: torch.Tensor
    reference: torch.Tensor
    component_scale: torch.Tensor
    weights: torch.Tensor
    k: int

    def __init__(
        self,
        autoencoders: EnsembleModule,
        center: np.ndarray,
        scale: np.ndarray,
        memory: np.ndarray,
        reference: np.ndarray,
        k: int,
        component_scale: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        super().__init__()
        if memory.shape[0] < k:
            raise ValueError(f"memory holds {memory.shape[0]} rows, fewer than k={k}")
        self.autoencoders = autoencoders
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.register_buffer("memory", torch.as_tensor(memory, dtype=torch.float32))
        # [D, N]: one sorted row of training values per feature, for searchsorted.
        self.register_buffer(
            "reference",
            torch.as_tensor(np.sort(reference, axis=0).T.copy(), dtype=torch.float32),
        )
        self.register_buffer(
            "component_scale", torch.as_tensor(component_scale, dtype=torch.float32)
        )
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float32))
        self.k = k

    @torch.jit.export
    def components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, 3]`` raw components (see ``COMPONENTS``), feature error, expected values."""
        reconstruction, feature_error, expected = self.autoencoders(x)
        z = (x - self.center) / self.scale
        distances = torch.cdist(z, self.memory)
        neighbours = distances.topk(self.k, dim=1, largest=False).values.mean(dim=1)
        values = x.t().contiguous()
        n = self.reference.shape[1]
        at_most = torch.searchsorted(self.reference, values, right=True)
        at_least = n - torch.searchsorted(self.reference, values, right=False)
        tail = torch.minimum(at_most, at_least).to(x.dtype).clamp(min=1.0) / (n + 1)
        tails = -torch.log(tail).sum(dim=0)
        return torch.stack([reconstruction, neighbours, tails], dim=1), feature_error, expected

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        parts, feature_error, expected = self.components(x)
        score = (parts / self.component_scale * self.weights).sum(dim=1)
        return score, feature_error, expected

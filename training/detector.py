"""The default bundle module: the autoencoders' error plus two views of the training traffic.

:class:`DetectorModule` adds to the reconstruction error the distance to the nearest
remembered normal rows and how far out in its own feature's tail each value lies
(:class:`TailLookup`).
"""

import numpy as np
import torch
from torch import nn

from training.model import MIN_SCALE, EnsembleModule, robust_scaling

__all__ = ["COMPONENTS", "DetectorModule", "TailLookup", "neighbour_scaling", "two_sided_tail"]

COMPONENTS = ("reconstruction", "neighbours", "tails")
#: Rows whose distances to the memory are computed at once (see DetectorModule._parts).
NEIGHBOUR_BLOCK_ROWS = 512


TAIL_CELLS = 1024
CONSTANT_RELATIVE_SCALE = 1e-3


def neighbour_scaling(X: np.ndarray, method: str = "robust") -> tuple[np.ndarray, np.ndarray]:
    """Center and scale of the neighbour space. ``robust``: median and IQR / 1.349 (the
    standard deviation of normal data); a column whose IQR is 0 (mostly one value) uses its
    standard deviation. ``range``: median and the training range, so a metric that barely moves
    in training does not turn its small moves into large distances. Either way a column
    constant in training counts a change of 0.1% of its value (or of 0.001) as one unit, so a
    never-seen value there is far from every remembered row."""
    X = np.asarray(X, dtype=np.float64)
    constant = CONSTANT_RELATIVE_SCALE * np.maximum(np.abs(np.median(X, axis=0)), 1.0)
    if method == "range":
        spread = X.max(axis=0) - X.min(axis=0)
        scale = np.where(spread > MIN_SCALE, spread, constant)
        return np.median(X, axis=0).astype(np.float32), scale.astype(np.float32)
    return robust_scaling(X, constant)


def two_sided_tail(sorted_values: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Share of training values at least as far out as each point, on its nearer side
    (ties count on both sides), floored at one value: ``min(#<=, #>=) / (n + 1)``."""
    n = len(sorted_values)
    at_most = np.searchsorted(sorted_values, points, side="right")
    at_least = n - np.searchsorted(sorted_values, points, side="left")
    return np.maximum(np.minimum(at_most, at_least), 1) / (n + 1)


class TailLookup(nn.Module):
    """``-log`` two-sided empirical tail probability of each value among ``reference``.

    Values are mapped to ``sign(t) log(1 + |t|)``, ``t = (x - median) / spread`` -- linear
    near the median, logarithmic in heavy tails -- and the training range of that is cut
    into ``cells`` equal cells; each cell holds the least extreme tail probability of any
    point in it (its edges and the training values that fall in it), so a lookup never
    overstates how unusual a value is. Scoring is a few elementwise operations and one
    gather per value (a binary search per value cost 3x more). Values outside the training
    range get the largest penalty, ``log(n + 1)``; that test is exact, on the raw values.
    """

    scale_in: torch.Tensor
    shift_in: torch.Tensor
    cell_scale: torch.Tensor
    cell_shift: torch.Tensor
    minimum: torch.Tensor
    maximum: torch.Tensor
    table: torch.Tensor
    offsets: torch.Tensor
    penalty: float
    cells: int

    def __init__(self, reference: np.ndarray, cells: int = TAIL_CELLS) -> None:
        super().__init__()
        n, d = reference.shape
        center, spread = robust_scaling(reference)
        # t = (x - center) / spread as one multiply-add, u = sign(t) log(1 + |t|),
        # cell = u / width - low / width.
        self.register_buffer("scale_in", torch.as_tensor(1.0 / spread, dtype=torch.float32))
        self.register_buffer("shift_in", torch.as_tensor(-center / spread, dtype=torch.float32))
        mapped = self._map(torch.as_tensor(reference, dtype=torch.float32))
        low, high = mapped.min(dim=0).values, mapped.max(dim=0).values
        width = torch.where(high > low, (high - low) / cells, torch.ones_like(high))
        self.register_buffer("cell_scale", 1.0 / width)
        self.register_buffer("cell_shift", -low / width)
        self.cells = cells
        table = np.zeros((d, cells))
        for j in range(d):
            column = np.sort(reference[:, j].astype(np.float64))
            with np.errstate(over="ignore"):  # a constant column's cells run off to inf
                at = low[j].item() + width[j].item() * np.arange(cells + 1)
                edges = center[j] + spread[j] * np.copysign(np.expm1(np.abs(at)), at)
            edge_tail = two_sided_tail(column, edges)
            tail = np.maximum(edge_tail[:-1], edge_tail[1:])
            # Each distinct training value's cell, computed as at scoring time.
            distinct = np.unique(reference[:, j])
            probe = np.zeros((len(distinct), d), dtype=np.float32)
            probe[:, j] = distinct
            slots = self._cell(torch.as_tensor(probe))[:, j].numpy()
            np.maximum.at(tail, slots, two_sided_tail(column, distinct.astype(np.float64)))
            table[j] = -np.log(tail)
        self.register_buffer("minimum", torch.as_tensor(reference.min(axis=0), dtype=torch.float32))
        self.register_buffer("maximum", torch.as_tensor(reference.max(axis=0), dtype=torch.float32))
        self.register_buffer("table", torch.as_tensor(table.reshape(-1), dtype=torch.float32))
        self.register_buffer("offsets", torch.arange(d) * cells)
        self.penalty = float(np.log(n + 1.0))

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.addcmul(self.shift_in, x, self.scale_in)
        return torch.log1p(t.abs()).copysign(t)  # asinh's shape at a quarter of its cost

    def _cell(self, x: torch.Tensor) -> torch.Tensor:
        position = torch.addcmul(self.cell_shift, self._map(x), self.cell_scale)
        return position.floor().clamp(0, self.cells - 1).long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` raw values -> ``[B, D]`` ``-log`` tail probabilities."""
        tails = self.table.take(self._cell(x) + self.offsets)
        return tails.masked_fill((x < self.minimum) | (x > self.maximum), self.penalty)


class DetectorModule(nn.Module):
    """The default bundle: three views of "how unlike the training traffic is this row".

    - ``reconstruction``: the autoencoders' mean per-feature error (``expected`` is their
      reconstruction);
    - ``neighbours``: Euclidean distances to ``memory`` (normal training rows in robust units,
      in ``subsets`` equal random subsets): the mean of the distance to the nearest row of the
      whole memory and the average over the subsets of the distance to each one's nearest row
      -- what an autoencoder misses when it reconstructs a row that lies off the data along a
      direction it learned. The nearest row keeps the finest local detail; averaging nearest
      rows of independent subsamples (as LeSiNN and iNNE do) keeps a handful of anomalies left
      in the training traffic from masking their kind: each sits in one subset only;
    - ``tails``: sum over features of ``-log`` of the two-sided empirical tail probability
      of the value among the training rows (``tails``, a :class:`TailLookup`) -- a value
      further out than anything in training scores ``log(n + 1)`` on that feature.

    Each component is divided by its 99th percentile on held-out normal rows
    (``component_scale``), so 1.0 means "as unusual as the 1% most unusual normal rows",
    and the score is their weighted sum (``weights``), folded into one factor each.
    ``feature_error`` splits the score over the features (an alert's top features) in
    proportion to each feature's reconstruction and tail terms.
    """

    inverse_scale: torch.Tensor
    shift: torch.Tensor
    memory: torch.Tensor
    memory_norms: torch.Tensor
    error_factor: float
    neighbour_factor: float
    tail_factor: float
    subsets: int
    block_rows: int

    def __init__(
        self,
        autoencoders: EnsembleModule,
        center: np.ndarray,
        scale: np.ndarray,
        memory: np.ndarray,
        tails: TailLookup,
        subsets: int,
        component_scale: np.ndarray,
        weights: np.ndarray,
    ) -> None:
        super().__init__()
        if not 1 <= subsets <= memory.shape[0] or memory.shape[0] % subsets:
            raise ValueError(
                f"{memory.shape[0]} memory rows do not split into {subsets} equal subsets"
            )
        self.autoencoders = autoencoders
        scale = np.asarray(scale, dtype=np.float32)
        self.register_buffer("inverse_scale", torch.as_tensor(1.0 / scale))
        self.register_buffer("shift", torch.as_tensor(-np.asarray(center) / scale))
        self.register_buffer("memory", torch.as_tensor(memory, dtype=torch.float32))
        self.register_buffer("memory_norms", self.memory.pow(2).sum(dim=1).unsqueeze(0))
        self.tails = tails
        factors = [float(w) / float(c) for w, c in zip(weights, component_scale, strict=True)]
        self.error_factor = factors[0] / memory.shape[1]  # the reconstruction is a mean
        self.neighbour_factor = factors[1]
        self.tail_factor = factors[2]
        self.subsets = subsets
        self.block_rows = NEIGHBOUR_BLOCK_ROWS

    def _parts(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        reconstruction, feature_error, expected = self.autoencoders(x)
        z = torch.addcmul(self.shift, x, self.inverse_scale)
        # Squared distances by one matrix product (cdist costs ~5x more at this shape);
        # |z|^2 is the same for every memory row, so it is added after the minima. The subsets
        # are consecutive blocks of the (shuffled) memory: one minimum over a view, no top-k.
        # In blocks of rows, into one scratch matrix per call: a [5,000 x 1,024] distance
        # matrix is 20 MB, and a fresh [512 x 1,024] one per block (2 MB, past the allocator's
        # mmap threshold) is faulted in afresh each time -- that cost more than the product.
        rows = min(self.block_rows, z.shape[0])
        scratch = torch.empty([rows, self.memory.shape[0]], dtype=z.dtype, device=z.device)
        nearest = torch.empty([z.shape[0], self.subsets], dtype=z.dtype, device=z.device)
        for start in range(0, z.shape[0], self.block_rows):
            block = z[start : start + self.block_rows]
            partial = scratch[: block.shape[0]]
            torch.addmm(self.memory_norms, block, self.memory.t(), alpha=-2.0, out=partial)
            torch.amin(
                partial.view(block.shape[0], self.subsets, -1),
                dim=2,
                out=nearest[start : start + block.shape[0]],
            )
        norms = z.pow(2).sum(dim=1, keepdim=True)
        distances = (nearest + norms).clamp(min=0.0).sqrt()  # [B, subsets]
        # Half the nearest row of the whole memory (the finest local detail, for clean
        # training traffic), half the subsets' average (robust to anomalies remembered).
        neighbours = 0.5 * (distances.amin(dim=1) + distances.mean(dim=1))
        return reconstruction, feature_error, neighbours, self.tails(x), expected

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The autoencoders' latent features of each row (see :meth:`EnsembleModule.encode`)."""
        return self.autoencoders.encode(x)

    @torch.jit.export
    def components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, 3]`` raw components (see ``COMPONENTS``), ``[B, 2, D]`` the reconstruction
        and tail components per feature (each sums to its component), expected values.
        """
        reconstruction, feature_error, neighbours, tails, expected = self._parts(x)
        parts = torch.stack([reconstruction, neighbours, tails.sum(dim=1)], dim=1)
        split = torch.stack([feature_error / feature_error.shape[1], tails], dim=1)
        return parts, split, expected

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Score, each feature's share of it (they sum to the score), expected values."""
        _, feature_error, neighbours, tails, expected = self._parts(x)
        # Reconstruction and tail terms are per feature already: the score is split over the
        # features in proportion to them (a per-feature split of the neighbour distance would
        # need the nearest rows' indices, which cost more than the rest together).
        per_feature = torch.add(tails * self.tail_factor, feature_error, alpha=self.error_factor)
        total = per_feature.sum(dim=1)
        score = torch.add(total, neighbours, alpha=self.neighbour_factor)
        share = score / total.clamp(min=1e-12)
        return score, per_feature * share.unsqueeze(1), expected

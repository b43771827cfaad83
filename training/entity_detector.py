"""Per-entity baselines in one module: each entity with its own autoencoder, neighbour memory,
feature tails and scales, stacked into tensors, and the generic detector for everything else.

:class:`EntityDetectorModule` keeps the bundle contract (``forward(x)`` scores every row with
the generic baseline, as any bundle does) and adds ``routed(x, baseline)``: ``baseline[i]`` is
row ``i``'s entity baseline, or ``-1`` for the generic one. Rows are routed by gathering each
row's own weights (``index_select`` on the stacked tensors) and one batched matrix product per
layer: no Python loop over rows or entities, and a cost per row that does not depend on how
many entities the bundle holds or a batch mixes.

One entity's baseline computes what :class:`~training.detector.DetectorModule` computes, on its
own training rows: reconstruction error (one autoencoder), distances to its remembered rows
(in equal subsets) and ``-log`` tail probabilities of each value, each component divided by its
99th percentile on the entity's held-out rows.
"""

import numpy as np
import torch
from torch import nn

from training.detector import DetectorModule, TailLookup

__all__ = ["EntityDetectorModule", "EntityParts", "StackedLinear"]

#: Entity rows scored at once (the gathered weights and memories of a block are
#: ``rows x (layer weights + memory)`` floats: ~10 MB for 512 rows of 19 features).
ENTITY_BLOCK_ROWS = 512


class StackedLinear(nn.Module):
    """``E`` linear layers of one shape: row ``i`` goes through layer ``baseline[i]``."""

    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, activation: nn.Module) -> None:
        super().__init__()
        self.register_buffer("weight", weight.detach().float().contiguous())  # [E, in, out]
        self.register_buffer("bias", bias.detach().float().contiguous())  # [E, out]
        self.activation = activation

    def forward(self, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        weight = self.weight.index_select(0, baseline)
        bias = self.bias.index_select(0, baseline).unsqueeze(1)
        return self.activation(torch.baddbmm(bias, x.unsqueeze(1), weight).squeeze(1))


class EntityParts:
    """One entity's baseline before stacking (numpy, float32)."""

    def __init__(
        self,
        layers: list[tuple[np.ndarray, np.ndarray]],
        center: np.ndarray,
        scale: np.ndarray,
        error_scale: np.ndarray,
        neighbour_center: np.ndarray,
        neighbour_scale: np.ndarray,
        memory: np.ndarray,
        tails: TailLookup,
        factors: np.ndarray,
    ) -> None:
        self.layers, self.center, self.scale = layers, center, scale
        self.error_scale = error_scale
        self.neighbour_center, self.neighbour_scale = neighbour_center, neighbour_scale
        self.memory, self.tails, self.factors = memory, tails, factors


def _stack(values: "list[np.ndarray] | list[torch.Tensor]") -> torch.Tensor:
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in values])


class EntityDetectorModule(nn.Module):
    """The generic detector plus ``E`` stacked entity baselines (see the module docstring)."""

    center: torch.Tensor
    inverse_scale: torch.Tensor
    error_scale: torch.Tensor
    neighbour_shift: torch.Tensor
    neighbour_inverse_scale: torch.Tensor
    memory: torch.Tensor
    memory_norms: torch.Tensor
    tail_scale_in: torch.Tensor
    tail_shift_in: torch.Tensor
    tail_cell_scale: torch.Tensor
    tail_cell_shift: torch.Tensor
    tail_minimum: torch.Tensor
    tail_maximum: torch.Tensor
    tail_table: torch.Tensor
    tail_offsets: torch.Tensor
    tail_penalty: torch.Tensor
    factors: torch.Tensor
    subsets: int
    cells: int
    block_rows: int

    def __init__(
        self,
        generic: DetectorModule,
        parts: list[EntityParts],
        activations: list[nn.Module],
        subsets: int,
    ) -> None:
        super().__init__()
        if not parts:
            raise ValueError("an entity detector needs at least one entity baseline")
        memory_rows = {p.memory.shape[0] for p in parts}
        cells = {p.tails.cells for p in parts}
        if len(memory_rows) != 1 or len(cells) != 1 or next(iter(memory_rows)) % subsets:
            raise ValueError("entity baselines must share memory rows (in equal subsets) and cells")
        self.generic = generic
        layers = []
        for k, activation in enumerate(activations):
            weight = _stack([p.layers[k][0] for p in parts])
            bias = _stack([p.layers[k][1] for p in parts])
            layers.append(StackedLinear(weight, bias, activation))
        self.layers = nn.ModuleList(layers)
        self.register_buffer("center", _stack([p.center for p in parts]))
        self.register_buffer("inverse_scale", 1.0 / _stack([p.scale for p in parts]))
        self.register_buffer("error_scale", _stack([p.error_scale for p in parts]))
        neighbour_scale = _stack([p.neighbour_scale for p in parts])
        self.register_buffer("neighbour_inverse_scale", 1.0 / neighbour_scale)
        self.register_buffer(
            "neighbour_shift", -_stack([p.neighbour_center for p in parts]) / neighbour_scale
        )
        self.register_buffer("memory", _stack([p.memory for p in parts]))  # [E, M, D]
        self.register_buffer("memory_norms", self.memory.pow(2).sum(dim=2))  # [E, M]
        tails = [p.tails for p in parts]
        self.register_buffer("tail_scale_in", _stack([t.scale_in for t in tails]))
        self.register_buffer("tail_shift_in", _stack([t.shift_in for t in tails]))
        self.register_buffer("tail_cell_scale", _stack([t.cell_scale for t in tails]))
        self.register_buffer("tail_cell_shift", _stack([t.cell_shift for t in tails]))
        self.register_buffer("tail_minimum", _stack([t.minimum for t in tails]))
        self.register_buffer("tail_maximum", _stack([t.maximum for t in tails]))
        self.register_buffer("tail_table", _stack([t.table for t in tails]).reshape(-1))
        d = parts[0].center.shape[0]
        self.cells = next(iter(cells))
        self.register_buffer("tail_offsets", torch.arange(d) * self.cells)
        self.register_buffer(
            "tail_penalty", torch.tensor([t.penalty for t in tails], dtype=torch.float32)
        )
        self.register_buffer("factors", _stack([p.factors for p in parts]))  # [E, 3]
        self.subsets = subsets
        self.block_rows = ENTITY_BLOCK_ROWS

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every row scored by the generic baseline (the bundle contract)."""
        return self.generic(x)

    @torch.jit.export
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The generic autoencoders' latent features of each row."""
        return self.generic.encode(x)

    @torch.jit.export
    def components(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The generic baseline's components (see :meth:`DetectorModule.components`)."""
        return self.generic.components(x)

    @torch.jit.export
    def routed(
        self, x: torch.Tensor, baseline: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Row ``i`` scored by entity baseline ``baseline[i]`` (``-1``: the generic one)."""
        n, d = x.shape[0], x.shape[1]
        own = baseline >= 0
        entity_rows = own.nonzero().squeeze(1)
        if entity_rows.numel() == 0:
            return self.generic(x)
        score = torch.empty([n], dtype=x.dtype, device=x.device)
        per_feature = torch.empty([n, d], dtype=x.dtype, device=x.device)
        expected = torch.empty([n, d], dtype=x.dtype, device=x.device)
        generic_rows = (~own).nonzero().squeeze(1)
        if generic_rows.numel() > 0:
            s, f, e = self.generic(x.index_select(0, generic_rows))
            score.index_copy_(0, generic_rows, s)
            per_feature.index_copy_(0, generic_rows, f)
            expected.index_copy_(0, generic_rows, e)
        for start in range(0, entity_rows.numel(), self.block_rows):
            rows = entity_rows[start : start + self.block_rows]
            s, f, e = self._entity(x.index_select(0, rows), baseline.index_select(0, rows))
            score.index_copy_(0, rows, s)
            per_feature.index_copy_(0, rows, f)
            expected.index_copy_(0, rows, e)
        return score, per_feature, expected

    @torch.jit.export
    def entity_components(self, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        """``[B, 3]`` raw components of each row under entity baseline ``baseline[i]`` (every
        ``baseline[i] >= 0``): mean reconstruction error, neighbour distance, tails' sum."""
        error, neighbours, tails, _ = self._entity_parts(x, baseline)
        return torch.stack([error.mean(dim=1), neighbours, tails.sum(dim=1)], dim=1)

    def _entity(
        self, x: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        error, neighbours, tails, expected = self._entity_parts(x, b)
        # The weighted sum, split over the features as DetectorModule.forward does.
        factors = self.factors.index_select(0, b)
        per_feature = tails * factors[:, 2:3] + error * factors[:, 0:1]
        total = per_feature.sum(dim=1)
        score = total + neighbours * factors[:, 1]
        share = score / total.clamp(min=1e-12)
        return score, per_feature * share.unsqueeze(1), expected

    def _entity_parts(
        self, x: torch.Tensor, b: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # Reconstruction: the entity's autoencoder in its own scaled units.
        center = self.center.index_select(0, b)
        inverse_scale = self.inverse_scale.index_select(0, b)
        z = (x - center) * inverse_scale
        h = z
        for layer in self.layers:
            h = layer(h, b)
        error = (z - h).pow(2) / self.error_scale.index_select(0, b)
        expected = h / inverse_scale + center
        # Neighbours: squared distances to the entity's memory by one batched product.
        zn = torch.addcmul(
            self.neighbour_shift.index_select(0, b),
            x,
            self.neighbour_inverse_scale.index_select(0, b),
        )
        memory = self.memory.index_select(0, b)  # [B, M, D]
        dots = torch.bmm(memory, zn.unsqueeze(2)).squeeze(2)  # [B, M]
        squared = self.memory_norms.index_select(0, b) - 2.0 * dots
        nearest = squared.view(x.shape[0], self.subsets, -1).amin(dim=2)
        distances = (nearest + zn.pow(2).sum(dim=1, keepdim=True)).clamp(min=0.0).sqrt()
        neighbours = 0.5 * (distances.amin(dim=1) + distances.mean(dim=1))
        # Tails: each value's cell in the entity's own table.
        t = torch.addcmul(
            self.tail_shift_in.index_select(0, b), x, self.tail_scale_in.index_select(0, b)
        )
        mapped = torch.log1p(t.abs()).copysign(t)
        position = torch.addcmul(
            self.tail_cell_shift.index_select(0, b),
            mapped,
            self.tail_cell_scale.index_select(0, b),
        )
        cell = position.floor().clamp(0, self.cells - 1).long()
        first = (b * x.shape[1]).unsqueeze(1) * self.cells
        tails = self.tail_table.take(first + self.tail_offsets + cell)
        outside = (x < self.tail_minimum.index_select(0, b)) | (
            x > self.tail_maximum.index_select(0, b)
        )
        penalty = self.tail_penalty.index_select(0, b).unsqueeze(1).expand_as(tails)
        tails = torch.where(outside, penalty, tails)
        return error, neighbours, tails, expected

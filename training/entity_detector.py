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

#: Entity rows scored at once: a block's gathered memories (``rows x D x memory rows``
#: floats, 2 MB for 256 rows of 8 features) stay in cache between the gather and its use.
ENTITY_BLOCK_ROWS = 256
#: Per-feature vectors of an entity, in this order, in ``vectors``: autoencoder center and
#: inverse scale, error scale, neighbour shift and inverse scale, tails' scale_in, shift_in,
#: cell_scale, cell_shift, minimum, maximum.
VECTORS = 11


class StackedLinear(nn.Module):
    """``E`` linear layers of one shape: row ``i`` goes through layer ``baseline[i]``.

    Each layer's weight and bias are one row of ``packed``: one gather per scored row."""

    packed: torch.Tensor
    inputs: int
    outputs: int

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, activation: nn.Module) -> None:
        super().__init__()
        e, self.inputs, self.outputs = (int(n) for n in weight.shape)  # [E, in, out]
        packed = torch.cat([weight.reshape(e, -1), bias.reshape(e, -1)], dim=1)
        self.register_buffer("packed", packed.detach().float().contiguous())
        self.activation = activation

    def forward(self, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        rows = self.packed.index_select(0, baseline)
        split = self.inputs * self.outputs
        weight = rows[:, :split].view(-1, self.inputs, self.outputs)
        bias = rows[:, split:].unsqueeze(1)
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

    vectors: torch.Tensor
    memory: torch.Tensor
    memory_norms: torch.Tensor
    tail_table: torch.Tensor
    tail_offsets: torch.Tensor
    scalars: torch.Tensor
    subsets: int
    cells: int
    block_rows: int
    memory_rows: int

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
        tails = [p.tails for p in parts]
        neighbour_scale = _stack([p.neighbour_scale for p in parts])
        # Every per-feature vector of an entity in one row (VECTORS says which is where): one
        # gather per scored row instead of one per vector.
        vectors = [
            _stack([p.center for p in parts]),
            1.0 / _stack([p.scale for p in parts]),
            _stack([p.error_scale for p in parts]),
            -_stack([p.neighbour_center for p in parts]) / neighbour_scale,
            1.0 / neighbour_scale,
            _stack([t.scale_in for t in tails]),
            _stack([t.shift_in for t in tails]),
            _stack([t.cell_scale for t in tails]),
            _stack([t.cell_shift for t in tails]),
            _stack([t.minimum for t in tails]),
            _stack([t.maximum for t in tails]),
        ]
        self.register_buffer("vectors", torch.stack(vectors, dim=1).reshape(len(parts), -1))
        memory = _stack([p.memory for p in parts])  # [E, M, D]
        self.memory_rows = int(memory.shape[1])
        # Each entity's memory transposed and flat, [E, D x M]: one row gather per scored row,
        # then one multiply-add per feature over all of its remembered rows.
        self.register_buffer("memory", memory.transpose(1, 2).reshape(len(parts), -1).contiguous())
        self.register_buffer("memory_norms", memory.pow(2).sum(dim=2))  # [E, M]
        self.register_buffer("tail_table", _stack([t.table for t in tails]).reshape(-1))
        d = parts[0].center.shape[0]
        self.cells = next(iter(cells))
        self.register_buffer("tail_offsets", torch.arange(d) * self.cells)
        # Per entity: the three components' factors (set by the builder), the tails' penalty.
        penalty = torch.tensor([[t.penalty] for t in tails], dtype=torch.float32)
        self.register_buffer("scalars", torch.cat([_stack([p.factors for p in parts]), penalty], 1))
        self.subsets = subsets
        self.block_rows = ENTITY_BLOCK_ROWS

    @torch.jit.unused
    def set_factors(self, factors: np.ndarray) -> None:
        """Each entity's component factors (weight / scale; the reconstruction's per feature)."""
        with torch.no_grad():
            self.scalars[:, :3] = torch.as_tensor(factors, dtype=torch.float32)

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
        # One scratch block for the gathered memories (a fresh one per block is faulted in
        # afresh each time: that cost more than the gather).
        scratch = torch.empty(
            [min(self.block_rows, entity_rows.numel()), self.memory.shape[1]],
            dtype=x.dtype,
            device=x.device,
        )
        for start in range(0, entity_rows.numel(), self.block_rows):
            rows = entity_rows[start : start + self.block_rows]
            s, f, e = self._entity(x.index_select(0, rows), baseline.index_select(0, rows), scratch)
            score.index_copy_(0, rows, s)
            per_feature.index_copy_(0, rows, f)
            expected.index_copy_(0, rows, e)
        return score, per_feature, expected

    @torch.jit.export
    def entity_components(self, x: torch.Tensor, baseline: torch.Tensor) -> torch.Tensor:
        """``[B, 3]`` raw components of each row under entity baseline ``baseline[i]`` (every
        ``baseline[i] >= 0``): mean reconstruction error, neighbour distance, tails' sum."""
        scratch = torch.empty([x.shape[0], self.memory.shape[1]], dtype=x.dtype, device=x.device)
        error, neighbours, tails, _ = self._entity_parts(x, baseline, scratch)
        return torch.stack([error.mean(dim=1), neighbours, tails.sum(dim=1)], dim=1)

    def _entity(
        self, x: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        error, neighbours, tails, expected = self._entity_parts(x, b, scratch)
        # The weighted sum, split over the features as DetectorModule.forward does.
        factors = self.scalars.index_select(0, b)
        per_feature = tails * factors[:, 2:3] + error * factors[:, 0:1]
        total = per_feature.sum(dim=1)
        score = total + neighbours * factors[:, 1]
        share = score / total.clamp(min=1e-12)
        return score, per_feature * share.unsqueeze(1), expected

    def _entity_parts(
        self, x: torch.Tensor, b: torch.Tensor, scratch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n, d = x.shape[0], x.shape[1]
        v = self.vectors.index_select(0, b).view(n, -1, d)
        # Reconstruction: the entity's autoencoder in its own scaled units.
        center, inverse_scale = v[:, 0], v[:, 1]
        z = (x - center) * inverse_scale
        h = z
        for layer in self.layers:
            h = layer(h, b)
        error = (z - h).pow(2) / v[:, 2]
        expected = h / inverse_scale + center
        # Neighbours: squared distances to the entity's memory, one multiply-add per feature.
        zn = torch.addcmul(v[:, 3], x, v[:, 4])
        gathered = scratch[:n]
        torch.index_select(self.memory, 0, b, out=gathered)
        memory = gathered.view(n, d, self.memory_rows)  # [B, D, M]
        dots = memory[:, 0, :] * zn[:, 0:1]  # [B, M]
        for j in range(1, d):
            dots.addcmul_(memory[:, j, :], zn[:, j : j + 1])
        squared = self.memory_norms.index_select(0, b) - 2.0 * dots
        nearest = squared.view(n, self.subsets, -1).amin(dim=2)
        distances = (nearest + zn.pow(2).sum(dim=1, keepdim=True)).clamp(min=0.0).sqrt()
        neighbours = 0.5 * (distances.amin(dim=1) + distances.mean(dim=1))
        # Tails: each value's cell in the entity's own table.
        t = torch.addcmul(v[:, 6], x, v[:, 5])
        mapped = torch.log1p(t.abs()).copysign(t)
        position = torch.addcmul(v[:, 8], mapped, v[:, 7])
        cell = position.floor().clamp(0, self.cells - 1).long()
        first = (b * d).unsqueeze(1) * self.cells
        tails = self.tail_table.take(first + self.tail_offsets + cell)
        outside = (x < v[:, 9]) | (x > v[:, 10])
        scalars = self.scalars.index_select(0, b)
        tails = torch.where(outside, scalars[:, 3:4].expand_as(tails), tails)
        return error, neighbours, tails, expected

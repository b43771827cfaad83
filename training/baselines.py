"""Per-entity baselines (``anomaly-train fit --per-entity``): which entities get one, how their
autoencoders are trained side by side, and how the bundle's module is put together.

Every row trains the generic detector (:func:`training.fit.train`); each entity with at least
``min_entity_rows`` normal rows (the ``max_baselines`` with the most, ties by name) also gets
its own: an autoencoder of the generic one's shape, a neighbour memory of
``entity_memory_rows`` of its rows, tail tables of ``entity_tail_cells`` cells per feature, and
its components' scales, all from its own rows of the same train/held-out split.

The entities' autoencoders are trained together, ``ENTITY_CHUNK`` at a time, as stacked
weights (one batched matrix product per layer for all of them): each step draws a mini-batch
of every entity's rows, each entity's loss is its own mean, and AdamW updates every weight on
its own, so each entity trains as it would alone; each keeps the weights of its best epoch on
its held-out rows.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from training.config import FitConfig
from training.detector import COMPONENTS, DetectorModule, TailLookup, neighbour_scaling
from training.entity_detector import EntityDetectorModule, EntityParts
from training.exceptions import TrainingError
from training.model import ACTIVATIONS, minmax_scaling, robust_scaling
from training.optimise import ERROR_FLOOR, layer_widths

__all__ = ["EntityBaselines", "build_entity_detector", "choose_entities"]

logger = logging.getLogger(__name__)

#: Entities whose autoencoders train in one stacked model (bounds the training memory).
ENTITY_CHUNK = 512


@dataclass
class EntityBaselines:
    module: EntityDetectorModule
    entities: tuple[str, ...]
    """Entity of each baseline, in index order (sorted)."""
    report: dict[str, Any]


def choose_entities(entities: Sequence[str | None], config: FitConfig) -> list[str]:
    """Entities with enough rows for their own baseline, sorted by name."""
    counts = Counter(e for e in entities if e)
    eligible = [(-n, e) for e, n in counts.items() if n >= config.min_entity_rows]
    return sorted(e for _, e in sorted(eligible)[: config.max_baselines])


def build_entity_detector(
    generic: DetectorModule,
    X_train: np.ndarray,
    train_entities: Sequence[str | None],
    X_val: np.ndarray,
    val_entities: Sequence[str | None],
    component_weights: np.ndarray,
    config: FitConfig,
) -> EntityBaselines | None:
    """Entity baselines beside ``generic``; None when no entity has enough rows."""
    if config.loss != "mse":
        raise TrainingError("--per-entity baselines need loss mse")
    chosen = choose_entities(list(train_entities) + list(val_entities), config)
    if not chosen:
        logger.warning(
            "--per-entity: no entity has %d normal rows (--min-entity-rows); the bundle has "
            "the generic baseline only",
            config.min_entity_rows,
        )
        return None
    started = time.perf_counter()
    train_of, val_of = (
        _rows_by_entity(train_entities, chosen),
        _rows_by_entity(val_entities, chosen),
    )
    # The random split can leave an entity near the bar too few held-out rows to scale its
    # components: it stays with the generic baseline.
    short = [e for e in chosen if len(val_of[e]) < 2 or len(train_of[e]) < config.memory_subsets]
    if short:
        logger.info("%d entities left too few rows in the split: generic baseline", len(short))
        dropped = set(short)
        chosen = [e for e in chosen if e not in dropped]
        if not chosen:
            return None
    hidden, latent = layer_widths(X_train.shape[1], config)
    widths = [X_train.shape[1], *hidden, latent, *reversed(hidden), X_train.shape[1]]
    # Largest first, so each chunk's entities have similar row counts (steps per epoch).
    order = sorted(chosen, key=lambda e: -len(train_of[e]))
    trained: dict[str, _Autoencoder] = {}
    for start in range(0, len(order), ENTITY_CHUNK):
        chunk = order[start : start + ENTITY_CHUNK]
        fitted = _fit_stacked(
            [X_train[train_of[e]] for e in chunk], [X_val[val_of[e]] for e in chunk], widths, config
        )
        trained.update(zip(chunk, fitted, strict=True))
    rng = np.random.default_rng(config.seed)
    parts = [_parts(trained[e], X_train[train_of[e]], config, rng) for e in chosen]
    subsets = min(config.memory_subsets, config.entity_memory_rows)
    activations = [
        ACTIVATIONS[config.activation]() if _activated(k, len(hidden)) else torch.nn.Identity()
        for k in range(len(widths) - 1)
    ]
    module = EntityDetectorModule(generic, parts, activations, subsets).eval()
    # Each component over its 99th percentile on the entity's held-out rows.
    scales = np.empty((len(chosen), len(COMPONENTS)), dtype=np.float64)
    with torch.no_grad():
        for i, e in enumerate(chosen):
            rows = torch.as_tensor(X_val[val_of[e]])
            index = torch.full((len(rows),), i, dtype=torch.long)
            parts_i = module.entity_components(rows, index).numpy().astype(np.float64)
            scales[i] = np.maximum(np.quantile(parts_i, 0.99, axis=0), ERROR_FLOOR)
        factors = component_weights[None, :] / scales
        factors[:, 0] /= X_train.shape[1]  # the reconstruction term is a mean over features
        module.set_factors(factors)
    report = {
        "entities": len(chosen),
        "min_entity_rows": config.min_entity_rows,
        "max_baselines": config.max_baselines,
        "entity_memory_rows": config.entity_memory_rows,
        "entity_tail_cells": config.entity_tail_cells,
        "rows_per_baseline_min": min(len(train_of[e]) + len(val_of[e]) for e in chosen),
        "rows_per_baseline_max": max(len(train_of[e]) + len(val_of[e]) for e in chosen),
        "seconds": round(time.perf_counter() - started, 3),
        "megabytes": round(
            sum(t.numel() * t.element_size() for t in module.buffers()) / 1e6
            - sum(t.numel() * t.element_size() for t in generic.buffers()) / 1e6,
            3,
        ),
    }
    seen = len({e for e in list(train_entities) + list(val_entities) if e})
    logger.info(
        "entity baselines: %d of %d entities (at least %d rows each), %.2f MB, in %.1f s; "
        "the others are scored by the generic baseline",
        len(chosen),
        seen,
        config.min_entity_rows,
        report["megabytes"],
        report["seconds"],
    )
    return EntityBaselines(module, tuple(chosen), report)


def _rows_by_entity(entities: Sequence[str | None], chosen: list[str]) -> dict[str, np.ndarray]:
    wanted = set(chosen)
    rows: dict[str, list[int]] = {e: [] for e in chosen}
    for i, e in enumerate(entities):
        if e in wanted:
            rows[e].append(i)
    return {e: np.asarray(r, dtype=np.int64) for e, r in rows.items()}


def _activated(layer: int, hidden_layers: int) -> bool:
    """Every layer is followed by the activation but the bottleneck's and the output's."""
    return layer != hidden_layers and layer != 2 * hidden_layers + 1


@dataclass
class _Autoencoder:
    layers: list[tuple[np.ndarray, np.ndarray]]
    center: np.ndarray
    scale: np.ndarray
    error_scale: np.ndarray


def _fit_stacked(
    trains: list[np.ndarray], vals: list[np.ndarray], widths: list[int], config: FitConfig
) -> list[_Autoencoder]:
    """Train one autoencoder per entity, all at once (see the module docstring)."""
    generator = torch.Generator().manual_seed(config.seed)
    scaling = minmax_scaling if config.scaling == "minmax" else robust_scaling
    stats = [scaling(X) for X in trains]
    center = torch.as_tensor(np.stack([c for c, _ in stats]))  # [E, D]
    scale = torch.as_tensor(np.stack([s for _, s in stats]))
    train_t, train_n = _padded(trains, center, scale)
    val_t, val_n = _padded(vals, center, scale)
    val_mask = (torch.arange(val_t.shape[1])[None, :] < val_n[:, None]).float()
    hidden_layers = (len(widths) - 2) // 2
    e = len(trains)
    params: list[torch.Tensor] = []
    for a, b in itertools.pairwise(widths):
        bound = 1.0 / math.sqrt(a)  # nn.Linear's default initialisation
        params.append(((torch.rand(e, a, b, generator=generator) * 2 - 1) * bound).requires_grad_())
        params.append(((torch.rand(e, b, generator=generator) * 2 - 1) * bound).requires_grad_())
    activation = ACTIVATIONS[config.activation]()

    def forward(z: torch.Tensor) -> torch.Tensor:
        h = z
        for k in range(len(widths) - 1):
            h = torch.baddbmm(params[2 * k + 1].unsqueeze(1), h, params[2 * k])
            if _activated(k, hidden_layers):
                h = activation(h)
        return h

    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = max(1, math.ceil(int(train_n.max()) / config.batch_size))
    rows = torch.arange(e)[:, None]
    best = [p.detach().clone() for p in params]
    best_loss = torch.full((e,), float("inf"))
    stale = torch.zeros(e, dtype=torch.long)
    for _ in range(config.epochs):
        for _ in range(steps):
            pick = (torch.rand(e, config.batch_size, generator=generator) * train_n[:, None]).long()
            batch = train_t[rows, pick]
            noisy = batch
            if config.noise > 0:
                noisy = batch + torch.randn(batch.shape, generator=generator) * config.noise
            loss = (forward(noisy) - batch).pow(2).mean(dim=(1, 2)).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            error = (forward(val_t) - val_t).pow(2).mean(dim=2)
            val_loss = (error * val_mask).sum(dim=1) / val_n
            better = val_loss < best_loss - 1e-7
            for kept, p in zip(best, params, strict=True):
                shape = (e,) + (1,) * (p.dim() - 1)
                kept.copy_(torch.where(better.view(shape), p.detach(), kept))
            best_loss = torch.where(better, val_loss, best_loss)
            stale = torch.where(better, torch.zeros_like(stale), stale + 1)
        if bool((stale >= config.patience).all()):
            break
    fitted = []
    with torch.no_grad():
        for i, X in enumerate(trains):
            z = (torch.as_tensor(X) - center[i]) / scale[i]
            h = z
            for k in range(len(widths) - 1):
                h = torch.addmm(best[2 * k + 1][i], h, best[2 * k][i])
                if _activated(k, hidden_layers):
                    h = activation(h)
            errors = (z - h).pow(2).numpy().astype(np.float64)
            per_feature = np.maximum(errors.mean(axis=0), ERROR_FLOOR)
            typical = float(np.median((errors / per_feature).mean(axis=1)))
            layers = [
                (best[2 * k][i].numpy().copy(), best[2 * k + 1][i].numpy().copy())
                for k in range(len(widths) - 1)
            ]
            error_scale = (per_feature * max(typical, ERROR_FLOOR)).astype(np.float32)
            fitted.append(_Autoencoder(layers, stats[i][0], stats[i][1], error_scale))
    return fitted


def _padded(
    arrays: list[np.ndarray], center: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled rows of each entity in one ``[E, max rows, D]`` tensor, and each one's count."""
    counts = torch.tensor([len(a) for a in arrays])
    out = torch.zeros(len(arrays), int(counts.max()), center.shape[1])
    for i, a in enumerate(arrays):
        out[i, : len(a)] = (torch.as_tensor(a) - center[i]) / scale[i]
    return out, counts.float()


def _parts(
    ae: _Autoencoder, X: np.ndarray, config: FitConfig, rng: np.random.Generator
) -> EntityParts:
    """An entity's memory and tails, as :func:`training.fit._detector` makes the generic's."""
    sample = X
    if len(sample) > config.sample_rows:
        sample = sample[np.sort(rng.choice(len(sample), config.sample_rows, replace=False))]
    center, scale = neighbour_scaling(X, config.neighbour_scaling)
    lookup = TailLookup(sample, cells=config.entity_tail_cells)
    with torch.no_grad():
        tails = lookup(torch.as_tensor(sample)).sum(dim=1).numpy()
    keep = tails <= np.quantile(tails, 1.0 - config.memory_trim)
    if keep.sum() < config.memory_subsets:
        keep = np.ones(len(sample), dtype=bool)
    kept = ((sample[keep] - center) / scale).astype(np.float32)[rng.permutation(int(keep.sum()))]
    # Equal memories for every entity: an entity with fewer rows repeats some.
    memory = kept[np.arange(config.entity_memory_rows) % len(kept)]
    return EntityParts(
        ae.layers,
        ae.center,
        ae.scale,
        ae.error_scale,
        center,
        scale,
        memory,
        lookup,
        np.ones(len(COMPONENTS), dtype=np.float32),
    )

"""What ``anomaly-train fit`` can set: :class:`FitConfig`, its defaults, and its checks.

The command line takes its defaults from here (:mod:`training.cli`), so a default has one home.
"""

from __future__ import annotations

from dataclasses import dataclass

from training.exceptions import TrainingError
from training.model import ACTIVATIONS

__all__ = ["SCORES", "FitConfig"]

SCORES = ("combined", "reconstruction")


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
    neighbour_scaling: str = "robust"
    """combined score: units of the neighbour distance: ``robust`` (median, IQR) or ``range``
    (median, the training range)."""
    memory_trim: float = 0.05
    """combined score: share of sampled rows with the most extreme feature values left out of
    the memory, so anomalies in the training traffic do not become "normal" neighbours."""
    per_entity: bool = False
    """Give each entity with enough rows its own baseline (``training.baselines``)."""
    min_entity_rows: int = 1000
    """per-entity: normal rows an entity needs for its own baseline."""
    max_baselines: int = 10_000
    """per-entity: at most this many baselines (the entities with the most rows)."""
    entity_memory_rows: int = 256
    """per-entity: rows each entity baseline remembers for the neighbour term."""
    entity_tail_cells: int = 256
    """per-entity: cells of each entity baseline's tail table per feature."""
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
        if self.neighbour_scaling not in ("robust", "range"):
            problems.append(
                f"neighbour scaling must be robust or range, got {self.neighbour_scaling!r}"
            )
        if not 0 <= self.memory_trim < 0.5:
            problems.append(f"memory trim must be in [0, 0.5), got {self.memory_trim}")
        if self.min_entity_rows < 20 or self.max_baselines < 1:
            problems.append(
                f"need min entity rows >= 20 and max baselines >= 1, got "
                f"{self.min_entity_rows}, {self.max_baselines}"
            )
        if not self.memory_subsets <= self.entity_memory_rows or self.entity_tail_cells < 8:
            problems.append(
                f"need memory subsets <= entity memory rows and entity tail cells >= 8, got "
                f"{self.entity_memory_rows}, {self.entity_tail_cells}"
            )
        if self.memory_subsets >= 1 and self.entity_memory_rows % self.memory_subsets:
            problems.append(
                f"entity memory rows ({self.entity_memory_rows}) must split into "
                f"{self.memory_subsets} equal subsets"
            )
        if self.per_entity and (self.score != "combined" or self.loss != "mse"):
            problems.append("per-entity baselines need score combined and loss mse")
        if problems:
            raise TrainingError("; ".join(problems))

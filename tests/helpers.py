"""Test helpers shared by unit and integration tests: tiny bundles and record builders."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.publish import WritableRegistry, write_bundle
from training.reference import build_reference
from worker.contract.bundle import BundleMetadata, DriftReference, ThresholdCalibration

NAMES = ("cpu", "mem", "disk", "net")


class DistanceModel(nn.Module):
    """score = mean((x - center)^2); expected = center. Scripted, it is a valid bundle module."""

    def __init__(self, center: list[float]) -> None:
        super().__init__()
        self.register_buffer("center", torch.tensor(center, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        error = (x - self.center) ** 2
        return error.mean(dim=1), error, self.center.expand_as(x)


def write_distance_bundle(
    directory: Path,
    names: tuple[str, ...] = NAMES,
    threshold: float = 4.0,
    version: str = "test-v1",
    drift_reference: DriftReference | None = None,
    calibration_rows: int = 100,
) -> BundleMetadata:
    """A bundle whose score is the mean squared distance from 0: easy to reason about in tests.

    Its threshold claims a 1% alert rate, set on ``calibration_rows`` held-out rows."""
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(DistanceModel([0.0] * len(names))), buffer)
    metadata = BundleMetadata(
        version=version,
        feature_names=names,
        threshold=threshold,
        calibration=ThresholdCalibration("quantile", 0.01, calibration_rows, 0.01),
        training={"rows_train": 0},
        sha256="",
        torch_version=torch.__version__,
        drift_reference=drift_reference,
    )
    return write_bundle(directory, buffer.getvalue(), metadata)


def standard_normal_reference(rows: int = 20_000, seed: int = 0) -> DriftReference:
    """The drift reference of standard normal training traffic for the distance bundle."""

    X = np.random.default_rng(seed).normal(size=(rows, len(NAMES)))
    return build_reference(X, (X[: rows // 5] ** 2).mean(axis=1))


def record(features: object, **fields: object) -> bytes:
    return json.dumps({"features": features, **fields}).encode()


def registry_with(
    tmp_path: Path, *versions: str, names: tuple[str, ...] = NAMES
) -> WritableRegistry:
    """A registry under ``tmp_path`` holding distance bundles named ``versions`` (none current)."""
    registry = WritableRegistry.create(tmp_path / "registry")
    for version in versions:
        registry.add(version, lambda d, v=version: write_distance_bundle(d, names=names, version=v))
    return registry


def correlated(n: int, seed: int = 0) -> np.ndarray:
    """``n`` rows of 4 features, two of them sums of the other two, with a little noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 2))
    X = np.column_stack([base[:, 0], base[:, 1], base[:, 0] + base[:, 1], base[:, 0] - base[:, 1]])
    return (X + 0.05 * rng.normal(size=X.shape)).astype(np.float32)

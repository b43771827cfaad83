"""The model bundle's format: the contract between ``training`` (writes) and the worker (serves).

A bundle is a directory::

    model.pt       TorchScript module (normalisation inside)
    bundle.json    metadata (:class:`BundleMetadata`), including the sha256 of model.pt

The TorchScript module takes raw features as float32 ``[B, D]`` and returns a
tuple ``(score [B], feature_error [B, D], expected [B, D])``: the anomaly score
(higher is more anomalous), each feature's contribution to it, and the value
the model expected for each feature, in the input's units. A bundle fitted with
``--per-entity`` lists in ``baselines`` the entities with a baseline of their own; its module
also has ``routed(x, index)`` (same outputs), where row ``i`` is scored by baseline
``index[i]`` and ``-1`` is the generic baseline ``forward`` uses for every row.

``anomaly-train`` writes ``bundle.json`` last, through a rename, so a reader never
sees metadata that describes a half-written model; :func:`read_metadata` checks the
model file against the checksum it records.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from worker.contract.exceptions import BundleError

__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILE",
    "MODEL_FILE",
    "BundleMetadata",
    "DriftReference",
    "ThresholdCalibration",
    "read_metadata",
    "sha256_file",
]

FORMAT_VERSION = 1
MODEL_FILE = "model.pt"
METADATA_FILE = "bundle.json"


@dataclass(frozen=True)
class ThresholdCalibration:
    """How the bundle's threshold was chosen."""

    method: str
    """``quantile``: the (1 - target_alert_rate) quantile of held-out normal scores;
    ``mad``: median + k * MAD (scaled to sigma) of those scores."""
    target_alert_rate: float
    """Fraction of normal records expected to alert."""
    calibration_rows: int
    """How many held-out rows the threshold was computed on."""
    realised_alert_rate: float
    """Fraction of those rows above the threshold."""
    k: float | None = None
    """``mad`` rule: threshold = median + k * MAD of held-out scores."""

    @property
    def expected_alert_rate(self) -> float:
        """The share of normal records expected to alert under this rule."""
        return self.target_alert_rate if self.method == "quantile" else self.realised_alert_rate


@dataclass(frozen=True)
class DriftReference:
    """The training traffic in bins, for drift monitoring (:mod:`~worker.contract.drift`);
    no raw rows.

    Bins are given by their interior edges: a value ``x`` falls in bin
    ``searchsorted(edges, x, side="right")``, so ``k`` edges make ``k + 1`` bins.
    """

    feature_edges: tuple[tuple[float, ...], ...]
    """Per feature, the interior edges of its training deciles (fewer where values tie)."""
    feature_counts: tuple[tuple[int, ...], ...]
    """Per feature, how many training rows fell in each bin."""
    feature_low: tuple[float, ...]
    """Per feature, the smallest training value."""
    feature_high: tuple[float, ...]
    """Per feature, the largest training value."""
    score_edges: tuple[float, ...]
    """Interior edges of the score's deciles on held-out normal rows, and its 99th percentile."""
    score_counts: tuple[int, ...]
    """How many of those rows fell in each score bin."""

    @property
    def rows(self) -> int:
        return sum(self.feature_counts[0]) if self.feature_counts else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, n_features: int | None = None) -> DriftReference:
        """Parse and check a reference (BundleError when it is inconsistent)."""
        try:
            reference = cls(
                feature_edges=tuple(tuple(float(e) for e in f) for f in data["feature_edges"]),
                feature_counts=tuple(tuple(int(c) for c in f) for f in data["feature_counts"]),
                feature_low=tuple(float(v) for v in data["feature_low"]),
                feature_high=tuple(float(v) for v in data["feature_high"]),
                score_edges=tuple(float(e) for e in data["score_edges"]),
                score_counts=tuple(int(c) for c in data["score_counts"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle drift reference is malformed: {exc!r}") from exc
        d = len(reference.feature_edges)
        lengths = {len(reference.feature_counts), len(reference.feature_low)}
        lengths |= {len(reference.feature_high)}
        if lengths != {d} or (n_features is not None and d != n_features):
            raise BundleError(f"bundle drift reference does not describe {n_features} features")
        pairs = [*zip(reference.feature_edges, reference.feature_counts, strict=True)]
        pairs.append((reference.score_edges, reference.score_counts))
        for edges, counts in pairs:
            if len(counts) != len(edges) + 1 or min(counts) < 0 or list(edges) != sorted(edges):
                raise BundleError("bundle drift reference has bins that do not fit their edges")
        return reference


@dataclass(frozen=True)
class BundleMetadata:
    """Everything a worker (or a person) needs to know about a bundle."""

    version: str
    feature_names: tuple[str, ...]
    threshold: float
    calibration: ThresholdCalibration
    training: dict[str, Any]
    sha256: str
    torch_version: str
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    format_version: int = FORMAT_VERSION
    drift_reference: DriftReference | None = None
    """The training traffic in bins (optional: bundles written before it have none)."""
    baselines: tuple[str, ...] = ()
    """Entities with a baseline of their own (``anomaly-train fit --per-entity``), sorted: the
    module's ``routed(x, index)`` scores a row of ``baselines[index]`` with it, and any other
    row (index -1) with the generic one. Empty: every row is scored by ``forward(x)``."""

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def to_json(self) -> str:
        data = asdict(self)
        data["n_features"] = self.n_features
        data["feature_names"] = list(self.feature_names)
        data["baselines"] = list(self.baselines)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> BundleMetadata:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise BundleError("bundle metadata is not a JSON object")
        if data.get("format_version") != FORMAT_VERSION:
            raise BundleError(
                f"bundle format_version {data.get('format_version')!r} is not supported "
                f"(this worker reads {FORMAT_VERSION})"
            )
        try:
            names = tuple(str(n) for n in data["feature_names"])
            if data.get("n_features", len(names)) != len(names):
                raise BundleError(
                    f"bundle says n_features={data['n_features']} but lists {len(names)} names"
                )
            return cls(
                version=str(data["version"]),
                feature_names=names,
                threshold=float(data["threshold"]),
                calibration=ThresholdCalibration(**data["calibration"]),
                training=dict(data["training"]),
                sha256=str(data["sha256"]),
                torch_version=str(data["torch_version"]),
                created_at=str(data["created_at"]),
                format_version=int(data["format_version"]),
                drift_reference=None
                if data.get("drift_reference") is None
                else DriftReference.from_dict(data["drift_reference"], len(names)),
                baselines=_baselines(data.get("baselines", [])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle metadata is incomplete or malformed: {exc!r}") from exc


def _baselines(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(e, str) and e for e in value):
        raise BundleError("bundle baselines must be a list of entity names")
    if value != sorted(set(value)):
        raise BundleError("bundle baselines must be sorted and distinct")
    return tuple(value)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_metadata(directory: Path) -> BundleMetadata:
    """Read and verify a bundle's metadata against its TorchScript file (checksum)."""
    meta_path, model_path = directory / METADATA_FILE, directory / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        raise BundleError(
            f"{directory} is not a model bundle (needs {METADATA_FILE} and {MODEL_FILE}); "
            "write one with 'anomaly-train fit'"
        )
    try:
        metadata = BundleMetadata.from_json(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"cannot read {meta_path}: {exc}") from exc
    actual = sha256_file(model_path)
    if actual != metadata.sha256:
        raise BundleError(
            f"{model_path} checksum mismatch: bundle.json says sha256 {metadata.sha256[:12]}..., "
            f"file has {actual[:12]}... (corrupt or replaced)"
        )
    if not metadata.threshold > 0:
        raise BundleError(f"bundle threshold must be > 0, got {metadata.threshold}")
    return metadata

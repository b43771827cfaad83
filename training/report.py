"""The training report of a version: ``report.json`` and ``report.png`` beside its bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from worker.contract.bundle import BundleMetadata

__all__ = ["write_report"]

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"


def write_report(directory: Path, metadata: BundleMetadata, report: dict[str, Any]) -> None:
    """Loss curves, held-out score histogram with the threshold, per-feature error, counts."""
    scores = np.asarray(report.get("validation_scores", []), dtype=np.float64)
    counts, edges = np.histogram(scores, bins=50) if scores.size else (np.array([]), np.array([]))
    document = {
        "version": metadata.version,
        "created_at": metadata.created_at,
        "threshold": metadata.threshold,
        "calibration": vars(metadata.calibration),
        "features": list(metadata.feature_names),
        "compression_ratio": report.get("compression_ratio"),
        "rows": {
            "train": report.get("rows_train"),
            "validation": report.get("rows_validation"),
            "trimmed_by_robust_pass": report.get("rows_trimmed"),
            "excluded": report.get("rows_excluded", {}),
        },
        "history": report.get("history", []),
        "validation_score_histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        "per_feature_validation_error": dict(
            zip(
                metadata.feature_names, report.get("per_feature_validation_error", []), strict=False
            )
        ),
        "score": report.get("score", {}),
        "config": report.get("config", {}),
        "trigger": report.get("trigger"),
    }
    (directory / REPORT_JSON).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    _plot(directory / REPORT_PNG, metadata, document, scores)


def _plot(path: Path, metadata: BundleMetadata, doc: dict[str, Any], scores: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    history = doc["history"]
    ax = axes[0][0]
    ax.plot([h["train_loss"] for h in history], label="train")
    ax.plot([h["val_loss"] for h in history], label="validation")
    ax.set(title="loss", xlabel="epoch", yscale="log")
    ax.legend()

    ax = axes[0][1]
    if scores.size:
        ax.hist(scores, bins=50, color="tab:blue", alpha=0.8)
    ax.axvline(metadata.threshold, color="tab:red", label=f"threshold {metadata.threshold:.3g}")
    ax.set(title="held-out normal scores", xlabel="score", ylabel="rows", yscale="log")
    ax.legend()

    ax = axes[1][0]
    per_feature = doc["per_feature_validation_error"]
    ax.bar(range(len(per_feature)), list(per_feature.values()), color="tab:orange")
    ax.set_xticks(range(len(per_feature)), list(per_feature), rotation=60, fontsize=7)
    ax.set(title="mean held-out error per feature")

    ax = axes[1][1]
    ax.axis("off")
    rows = doc["rows"]
    lines = [
        f"version {metadata.version}",
        f"features {len(metadata.feature_names)}, compression ratio {doc['compression_ratio']:.2f}",
        f"rows: train {rows['train']}, validation {rows['validation']}",
        f"trimmed by robust pass: {rows['trimmed_by_robust_pass']}",
        f"threshold {metadata.threshold:.4g} ({metadata.calibration.method})",
        f"held-out alert rate {metadata.calibration.realised_alert_rate:.4f}",
        "excluded before training:" if rows["excluded"] else "excluded before training: none",
        *(f"  {reason}: {count}" for reason, count in rows["excluded"].items()),
    ]
    ax.text(0.0, 1.0, "\n".join(lines), va="top", family="monospace", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(fig)

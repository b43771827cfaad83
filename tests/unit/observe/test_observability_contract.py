"""Every metric the rules and the dashboard use is one the worker exports."""

import json
import re
from pathlib import Path

import yaml

from worker.observe.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[3]
SUFFIXES = ("", "_total", "_bucket", "_sum", "_count", "_created")


def metrics_families():
    """Every metric family a serving worker exports (the drift ones once its window has
    records)."""
    import numpy as np

    from training.reference import build_reference
    from worker.contract.drift import DriftMonitor

    metrics = WorkerMetrics()
    X = np.random.default_rng(0).normal(size=(100, 2))
    monitor = DriftMonitor.from_reference(build_reference(X, X[:, 0]), 100, 60)
    monitor.observe(X, X[:, 0])
    metrics.track_drift(lambda: (monitor, ["a", "b"]), 10)
    return list(metrics.registry.collect())


def exported_names():
    """Every sample name a serving worker exports."""
    return {family.name + suffix for family in metrics_families() for suffix in SUFFIXES}


def metric_names(expr):
    return set(re.findall(r"\b(anomaly_[a-z_]+)", expr))


def test_alert_rules_use_exported_metrics():
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    used = set().union(*(metric_names(r["expr"]) for g in rules["groups"] for r in g["rules"]))
    assert used and used <= exported_names(), used - exported_names()


def test_dashboard_uses_exported_metrics_and_covers_the_pipeline():
    dashboard = json.loads((ROOT / "deploy/grafana/anomaly-worker.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used <= exported_names(), used - exported_names()
    for needed in (
        "anomaly_records_consumed_total",
        "anomaly_batch_size_bucket",
        "anomaly_inference_duration_seconds_bucket",
        "anomaly_end_to_end_latency_seconds_bucket",
        "anomaly_consumer_lag",
        "anomaly_alerts_total",
        "anomaly_records_invalid_total",
        "anomaly_score_ratio_bucket",
        "anomaly_model_info",
        "anomaly_feature_drift",
        "anomaly_score_drift",
    ):
        assert needed in used, needed


def test_the_readme_lists_every_exported_metric_and_no_other():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Metrics and probes") : readme.index("## Drift")]
    listed = {
        re.sub(r"\{.*", "", name) for name in re.findall(r"^\| `(anomaly_[^`]+)` \|", table, re.M)
    }
    exported = set()
    for family in metrics_families():
        suffix = "_total" if family.type == "counter" else ""
        exported.add(family.name + suffix)
    assert listed == exported, (sorted(listed - exported), sorted(exported - listed))

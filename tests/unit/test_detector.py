"""The default combined score: what each component catches, calibration, the bundle round trip."""

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from training.data import Table
from training.exceptions import TrainingError
from training.fit import COMPONENT_WEIGHTS, FitConfig, fit_bundle, train
from training.model import COMPONENTS
from worker.scoring import Scorer

FAST = FitConfig(epochs=40, patience=8, seed=0)


def line(n: int, seed: int = 0) -> np.ndarray:
    """Two features on a line (x2 = 2 x1), x1 standard normal, plus a third independent one."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    X = np.column_stack([x1, 2 * x1 + 0.05 * rng.normal(size=n), rng.normal(size=n)])
    return X.astype(np.float32)


def components(result, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        parts = result.module.components(torch.as_tensor(X))[0].numpy()
    scale = np.array([result.report["score"]["component_scale"][c] for c in COMPONENTS])
    return parts / scale


def scores(result, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return result.module(torch.as_tensor(X))[0].numpy()


def test_a_row_far_out_along_the_learned_direction_alerts():
    # An autoencoder that learned the line reconstructs (8, 16, 0) almost perfectly: it lies on
    # the line, just further out than any training row. The neighbour and tail components see it.
    result = train(line(3000), FAST)
    far = np.array([[8.0, 16.0, 0.0], [-7.0, -14.0, 0.5]], dtype=np.float32)
    parts = components(result, far)
    assert (parts[:, COMPONENTS.index("neighbours")] > 3).all()
    assert (parts[:, COMPONENTS.index("tails")] > 1).all()
    assert (scores(result, far) > result.threshold).all()


def test_a_value_never_seen_in_a_constant_column_alerts():
    X = line(2000)
    X = np.column_stack([X, np.full(len(X), 3.0, dtype=np.float32)])
    result = train(X, FAST)
    probe = line(200, seed=5)
    usual = np.column_stack([probe, np.full(len(probe), 3.0, dtype=np.float32)])
    odd = np.column_stack([probe, np.full(len(probe), 3.5, dtype=np.float32)])
    assert (scores(result, usual) > result.threshold).mean() < 0.05
    assert (scores(result, odd) > result.threshold).all()


def cluster(n: int, seed: int) -> np.ndarray:
    """A tight cluster out in every feature's tail: a burst of one kind of attack, say."""
    rng = np.random.default_rng(seed)
    return (np.array([-5.0, 5.0, 6.0]) + 0.05 * rng.normal(size=(n, 3))).astype(np.float32)


def test_anomalies_left_in_the_training_traffic_are_not_remembered_as_normal():
    # 1% of the training rows are the cluster: remembered, its rows would be each other's
    # nearest neighbours and a fresh burst of the same attack would score as normal.
    X = np.vstack([line(4000, seed=1), cluster(40, seed=2)])
    burst, normal = cluster(300, seed=3), line(3000, seed=4)
    result = train(X, FAST)
    assert result.report["score"]["memory_trimmed"] >= 40
    assert (scores(result, burst) > result.threshold).all()
    assert (scores(result, normal) > result.threshold).mean() <= 0.02
    remembered = train(X, replace(FAST, memory_trim=0.0))
    assert (scores(remembered, burst) > remembered.threshold).mean() < 0.05


def test_each_component_is_on_the_scale_of_held_out_normal_rows():
    result = train(line(10_000), FAST)
    fresh = components(result, line(20_000, seed=7))
    # 1.0 is each component's 99th percentile on held-out normal rows.
    share_above = (fresh > 1.0).mean(axis=0)
    assert ((share_above > 0.005) & (share_above < 0.02)).all(), share_above
    rate = (scores(result, line(20_000, seed=8)) > result.threshold).mean()
    assert 0.005 <= rate <= 0.015
    assert result.report["score"]["weights"] == COMPONENT_WEIGHTS


def test_memory_is_a_bounded_sample_and_the_bundle_scores_what_training_scored(tmp_path):
    X = line(6000)
    config = FitConfig(epochs=20, patience=5, seed=2, memory_rows=500)
    metadata = fit_bundle(Table(X, ("a", "b", "c")), tmp_path / "m", config)
    assert metadata.training["score"]["reference_rows"] == 500
    assert metadata.training["score"]["memory_rows"] == 500 - 25  # 5% trimmed
    scorer = Scorer.load(tmp_path / "m", "cpu")
    assert tuple(scorer.module.memory.shape) == (475, 3)
    probe = line(64, seed=9)
    trained = train(X, config)  # same data, same seed: the same model
    np.testing.assert_allclose(scorer.score(probe).scores, scores(trained, probe), rtol=1e-6)
    assert trained.threshold == metadata.threshold


def test_reconstruction_only_score_is_still_available():
    result = train(line(1000), FitConfig(epochs=10, seed=0, score="reconstruction"))
    assert result.report["score"] == {"method": "reconstruction"}
    assert not hasattr(result.module, "memory")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"score": "knn"}, "score must be one of combined, reconstruction"),
        ({"neighbours": 0}, "neighbours must be >= 1"),
        ({"memory_rows": 4}, "memory rows >= 2 x neighbours"),
        ({"memory_trim": 0.5}, "memory trim must be in [0, 0.5)"),
    ],
)
def test_bad_score_settings_are_refused(overrides, message):
    with pytest.raises(TrainingError, match=re.escape(message)):
        train(line(100), FitConfig(**overrides))

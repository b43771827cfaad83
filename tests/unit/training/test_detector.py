"""The default combined score: what each component catches, calibration, the bundle round trip."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import FitConfig
from training.data import Table
from training.detector import COMPONENTS, TailLookup, two_sided_tail
from training.evaluate import roc_auc
from training.exceptions import TrainingError
from training.fit import COMPONENT_WEIGHTS, fit_bundle, neighbour_scaling, train
from worker.contract.scoring import Scorer

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
    # 1% of the training rows are the cluster. Left out of the memory (they are the
    # sample's most extreme rows), a fresh burst of the same attack is far from every one.
    X = np.vstack([line(4000, seed=1), cluster(40, seed=2)])
    burst, normal = cluster(300, seed=3), line(3000, seed=4)
    result = train(X, FAST)
    assert result.report["score"]["sample_trimmed"] >= 40
    with torch.no_grad():
        module = result.module
        memory = (module.memory - module.shift) / module.inverse_scale  # back to raw units
        memory = memory.numpy()
    assert np.abs(memory[:, 2]).max() < 5  # no remembered row near the cluster's 6.0
    assert (scores(result, burst) > result.threshold).all()
    assert (scores(result, normal) > result.threshold).mean() <= 0.02


def test_each_component_is_on_the_scale_of_held_out_normal_rows():
    result = train(line(10_000), FAST)
    fresh = components(result, line(20_000, seed=7))
    # 1.0 is each component's 99th percentile on held-out normal rows.
    share_above = (fresh > 1.0).mean(axis=0)
    assert ((share_above > 0.005) & (share_above < 0.02)).all(), share_above
    rate = (scores(result, line(20_000, seed=8)) > result.threshold).mean()
    assert 0.005 <= rate <= 0.015
    assert result.report["score"]["weights"] == COMPONENT_WEIGHTS


def test_memory_is_trimmed_training_rows_and_the_bundle_scores_what_training_scored(tmp_path):
    X = line(6000)
    config = FitConfig(epochs=20, patience=5, seed=2, sample_rows=500, memory_rows=300)
    metadata = fit_bundle(Table(X, ("a", "b", "c")), tmp_path / "m", config)
    assert metadata.training["score"]["sample_rows"] == 500
    assert metadata.training["score"]["sample_trimmed"] == 25  # 5%
    assert metadata.training["score"]["memory_rows"] == 300
    assert metadata.training["score"]["memory_subsets"] == 4
    scorer = Scorer.load(tmp_path / "m", "cpu")
    module = scorer.module
    assert tuple(module.memory.shape) == (300, 3)
    # every remembered row is a training row, in the neighbour space's units
    raw = ((module.memory - module.shift) / module.inverse_scale).numpy()
    nearest = np.abs(raw[:, None, :] - X[None, :, :]).max(axis=2).min(axis=1)
    assert nearest.max() < 1e-4
    probe = line(64, seed=9)
    trained = train(X, config)  # same data, same seed: the same model
    np.testing.assert_allclose(scorer.score(probe).scores, scores(trained, probe), rtol=1e-6)
    assert trained.threshold == metadata.threshold


def test_the_neighbour_term_is_half_nearest_row_half_the_subsets_average():
    result = train(line(2000), FitConfig(epochs=5, seed=0, memory_rows=400, memory_subsets=4))
    module = result.module
    # 1,100 rows: three blocks of the distance computation, the last one partial, all through
    # one scratch matrix (a block that kept an earlier block's distances would show here).
    probe = line(1100, seed=3)
    assert module.block_rows < len(probe) < 3 * module.block_rows
    with torch.no_grad():
        parts = module.components(torch.as_tensor(probe))[0].numpy()
        z = (torch.as_tensor(probe) * module.inverse_scale + module.shift).numpy()
    memory = module.memory.numpy().reshape(4, 100, 3)
    distances = np.sqrt(((z[:, None, None, :] - memory[None]) ** 2).sum(axis=3))  # [B, 4, 100]
    per_subset = distances.min(axis=2)  # [B, 4]
    expected = 0.5 * (per_subset.min(axis=1) + per_subset.mean(axis=1))
    np.testing.assert_allclose(parts[:, COMPONENTS.index("neighbours")], expected, rtol=1e-4)


def test_scores_do_not_depend_on_how_rows_are_batched():
    module = train(line(2000), FitConfig(epochs=5, seed=0, memory_rows=400)).module
    probe = torch.as_tensor(line(1100, seed=4))
    with torch.no_grad():
        whole = module(probe)[0]
        pieces = torch.cat([module(probe[i : i + 7])[0] for i in range(0, len(probe), 7)])
        empty = module(probe[:0])
    # Matrix products of other shapes round differently (~1e-5 near a remembered row).
    torch.testing.assert_close(whole, pieces, rtol=1e-4, atol=1e-4)
    assert empty[0].shape == (0,) and empty[1].shape == (0, 3)


def test_a_few_anomalies_left_in_the_memory_mask_only_their_subset():
    # Ten copies of an attack survive the trim (they are not extreme in any one feature):
    # with one memory the attack's distance is ~0; with 4 subsets the subsets without a copy
    # keep it far.
    rng = np.random.default_rng(0)
    normal = rng.normal(size=(3000, 4)).astype(np.float32)
    attack = np.array([1.0, -1.0, 1.0, -1.0], dtype=np.float32)
    X = np.vstack([normal, attack + 0.01 * rng.normal(size=(10, 4)).astype(np.float32)])
    probe = (attack + 0.01 * rng.normal(size=(20, 4))).astype(np.float32)
    neighbour = COMPONENTS.index("neighbours")
    plain = components(train(X, FitConfig(epochs=5, seed=0, memory_subsets=1)), probe)
    bagged = components(train(X, FitConfig(epochs=5, seed=0, memory_subsets=4)), probe)
    assert np.median(plain[:, neighbour]) < 0.2
    assert np.median(bagged[:, neighbour]) > 2 * np.median(plain[:, neighbour])


def test_neighbour_scaling_ignores_outliers_and_handles_constant_columns():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=1000), np.full(1000, 5.0), np.zeros(1000)])
    X[:10, 0] = 1e6  # 1% wild values: a standard deviation would be ~1e5
    X[:100, 2] = 1.0  # mostly one value: IQR 0, so the standard deviation
    center, scale = neighbour_scaling(X)
    assert abs(center[0]) < 0.1 and 0.9 < scale[0] < 1.1
    assert center[1] == 5.0 and scale[1] == pytest.approx(0.005)
    assert scale[2] == pytest.approx(X[:, 2].std(), rel=1e-5)


def test_range_neighbour_scaling_measures_each_metric_in_its_training_range():
    rng = np.random.default_rng(0)
    # A metric in [0, 1] that barely moves (telemetry min-max scaled over a month): robust
    # units make a 0.01 move 10 units; its range makes it a small share of its span.
    quiet = 0.5 + rng.normal(scale=0.001, size=1000)
    quiet[:5] = [0.0, 1.0, 0.2, 0.9, 0.4]  # the month's rare excursions set its range
    X = np.column_stack([quiet, np.full(1000, 5.0)])
    _, robust = neighbour_scaling(X)
    center, scale = neighbour_scaling(X, "range")
    assert robust[0] < 0.01 and scale[0] == pytest.approx(1.0)
    assert center[1] == 5.0 and scale[1] == pytest.approx(0.005)  # constant: 0.1% of it


def test_a_bundle_remembers_its_neighbour_scaling_and_refuses_an_unknown_one():
    result = train(line(600), FitConfig(epochs=3, seed=0, neighbour_scaling="range"))
    assert result.report["config"]["neighbour_scaling"] == "range"
    with pytest.raises(TrainingError, match="neighbour scaling must be robust or range"):
        FitConfig(neighbour_scaling="iqr").validate()


def test_reconstruction_only_score_is_still_available():
    result = train(line(1000), FitConfig(epochs=10, seed=0, score="reconstruction"))
    assert result.report["score"] == {"method": "reconstruction"}
    assert not hasattr(result.module, "memory")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"score": "knn"}, "score must be one of combined, reconstruction"),
        ({"memory_subsets": 0}, "need 1 <= memory subsets <= memory rows <= sample rows"),
        ({"memory_rows": 5000}, "need 1 <= memory subsets <= memory rows <= sample rows"),
        # a smaller sample alone: the default memory no longer fits, and the line says which flags
        ({"sample_rows": 800}, "got 4, 1024, 800 (--memory-subsets, --memory-rows, --sample-rows)"),
        ({"memory_trim": 0.5}, "memory trim must be in [0, 0.5)"),
    ],
)
def test_bad_score_settings_are_refused(overrides, message):
    with pytest.raises(TrainingError, match=re.escape(message)):
        train(line(100), FitConfig(**overrides))


def test_feature_errors_split_the_score_and_point_at_the_odd_feature(tmp_path):
    X = line(3000)
    fit_bundle(Table(X, ("a", "b", "c")), tmp_path / "m", FAST)
    scorer = Scorer.load(tmp_path / "m", "cpu")
    probe = line(100, seed=6)
    probe[:, 2] += 6.0  # only feature c is odd
    scored = scorer.score(probe)
    errors, expected = scored.details(np.arange(len(probe)))
    np.testing.assert_allclose(errors.sum(axis=1), scored.scores, rtol=1e-4)
    assert (errors >= 0).all() and expected.shape == probe.shape
    assert (errors.argmax(axis=1) == 2).all()


def test_tail_lookup_matches_the_empirical_tail_and_never_overstates_it():
    # A binary feature (90% zeros), a normal one and a heavy-tailed one (up to ~1e4).
    rng = np.random.default_rng(0)

    def rows(n: int) -> np.ndarray:
        return np.column_stack(
            [rng.random(n) < 0.1, rng.normal(size=n), rng.pareto(1.0, size=n)]
        ).astype(np.float32)

    reference = rows(4000)
    lookup = TailLookup(reference)
    probe = np.vstack([rows(2000), reference[:500], [[2.0, 9.0, 1e6], [-1.0, -9.0, -1.0]]])
    with torch.no_grad():
        looked_up = lookup(torch.as_tensor(probe.astype(np.float32))).numpy()
    exact = np.column_stack(
        [
            -np.log(two_sided_tail(np.sort(reference[:, j]).astype(np.float64), probe[:, j]))
            for j in range(3)
        ]
    )
    outside = (probe < reference.min(axis=0)) | (probe > reference.max(axis=0))
    assert outside[-2:].all()
    assert np.allclose(looked_up[outside], np.log(4001.0))
    inside = ~outside
    assert (looked_up[inside] <= exact[inside] + 1e-5).all()  # never overstated
    # Ties count on both sides: 0 is the common value, 1 the rare one.
    assert np.allclose(looked_up[:2000, 0], exact[:2000, 0], atol=1e-5)
    # Continuous and heavy-tailed: the cells are fine enough to lose little, except next to
    # a dense edge (the heavy-tailed feature's many values near 0), where a cell holds many.
    gap = (exact - looked_up)[inside[:, 1:].all(axis=1)][:, 1:]
    assert np.median(gap) < 0.01 and np.quantile(gap, 0.95) < 0.2
    far = probe[:2000, 2] > np.quantile(reference[:, 2], 0.999)
    assert far.any() and (looked_up[:2000][far, 2] > np.log(1000)).all()


ADBENCH = Path(__file__).resolve().parents[4] / "shared" / "data" / "adbench"


@pytest.mark.skipif(not ADBENCH.exists(), reason="public benchmark data not beside the checkout")
# cardio's floor was 0.95 with 256 k-means prototypes; the subset memory, chosen for training
# traffic with anomalies left in (mean ROC-AUC over 34 datasets 73.7 -> 76.0), scores a little
# lower on this dataset (cardio, normal protocol, 3 seeds: 96.8 -> 95.8; docs/detection.md).
@pytest.mark.parametrize(("name", "floor"), [("38_thyroid", 0.96), ("6_cardio", 0.94)])
def test_default_score_on_real_data_beats_the_autoencoder_alone(name, floor):
    # The datasets where the autoencoder alone did worst (ROC-AUC 0.785 and 0.868 on this
    # split): trained on the normal rows of a stratified 70%, scored on the other 30%.
    with np.load(ADBENCH / f"{name}.npz") as data:
        X, y = data["X"].astype(np.float32), data["y"].astype(int)
    rng = np.random.default_rng(0)
    train_rows, test_rows = [], []
    for label in (0, 1):
        rows = rng.permutation(np.flatnonzero(y == label))
        cut = round(len(rows) * 0.7)
        train_rows.append(rows[:cut])
        test_rows.append(rows[cut:])
    fit_rows, test = np.sort(train_rows[0]), np.sort(np.concatenate(test_rows))
    combined = train(X[fit_rows], FitConfig(seed=0))
    alone = train(X[fit_rows], FitConfig(seed=0, score="reconstruction"))
    auc_combined = roc_auc(y[test], scores(combined, X[test]))
    auc_alone = roc_auc(y[test], scores(alone, X[test]))
    assert auc_combined >= floor, (auc_combined, auc_alone)
    assert auc_combined >= auc_alone + 0.05, (auc_combined, auc_alone)
    assert auc_combined >= auc_alone + 0.05
    normal = y[test] == 0
    rate = (scores(combined, X[test][normal]) > combined.threshold).mean()
    assert rate <= 0.03  # target 0.01, on a few hundred held-out normal rows

"""Drift statistics: PSI against a reference implementation, the bands, the sliding window."""

import json

import numpy as np
import pytest
from scipy.stats import entropy

from tests.helpers import standard_normal_reference, write_distance_bundle
from training.reference import build_reference, quantile_edges
from worker.contract.bundle import DriftReference, read_metadata
from worker.contract.drift import SMOOTHING, DriftMonitor, bin_counts, psi
from worker.contract.exceptions import BundleError
from worker.settings import DEFAULT_DRIFT_WINDOW_RECORDS


def monitor(
    reference: DriftReference, window=DEFAULT_DRIFT_WINDOW_RECORDS, seconds=1e9, clock=None
):
    return DriftMonitor.from_reference(reference, window, seconds, clock=clock or (lambda: 0.0))


def feed(m: DriftMonitor, X: np.ndarray, scores: np.ndarray, batch: int = 500) -> None:
    for start in range(0, len(X), batch):
        m.observe(X[start : start + batch], scores[start : start + batch])


def test_psi_is_the_symmetric_kl_divergence_of_the_smoothed_shares():
    rng = np.random.default_rng(0)
    for _ in range(20):
        bins = int(rng.integers(2, 12))
        actual = rng.integers(0, 500, bins)
        expected = rng.integers(0, 500, bins)
        a = (actual + SMOOTHING) / (actual + SMOOTHING).sum()
        e = (expected + SMOOTHING) / (expected + SMOOTHING).sum()
        assert psi(actual, expected) == pytest.approx(entropy(a, e) + entropy(e, a), rel=1e-9)


def test_psi_by_hand():
    # Shares 0.5/0.5 against 0.9/0.1 (counts large enough that smoothing is negligible):
    # (0.5 - 0.9) ln(0.5/0.9) + (0.5 - 0.1) ln(0.5/0.1) = 0.2351 + 0.6438 = 0.8789
    assert psi(np.array([500_000, 500_000]), np.array([900_000, 100_000])) == pytest.approx(
        0.8789, abs=1e-4
    )
    assert psi(np.array([7, 7, 7]), np.array([70, 70, 70])) == pytest.approx(0.0, abs=1e-12)


def test_edges_and_counts_agree_on_ties_and_binary_features():
    binary = np.array([0.0] * 70 + [1.0] * 30)
    edges = quantile_edges(binary)
    assert bin_counts(binary, edges).tolist() == [0, 70, 30]
    assert bin_counts(np.array([0.0, 1.0, 1.0, 2.0, np.nan]), edges).tolist() == [0, 1, 3]
    assert len(quantile_edges(np.arange(1000.0))) == 9
    assert quantile_edges(np.full(50, 3.0)).tolist() == [3.0]


def normal_reference(rng, n=20_000, d=8):
    X = rng.normal(size=(n, d)).astype(np.float32)
    scores = (X.astype(np.float64) ** 2).mean(axis=1)
    return X, scores, build_reference(X, scores)


def test_stable_traffic_stays_well_below_the_first_band():
    rng = np.random.default_rng(1)
    _, _, reference = normal_reference(rng)
    m = monitor(reference)
    live = rng.normal(size=(DEFAULT_DRIFT_WINDOW_RECORDS, 8)).astype(np.float32)
    feed(m, live, (live.astype(np.float64) ** 2).mean(axis=1))
    snap = m.snapshot()
    assert snap.records == DEFAULT_DRIFT_WINDOW_RECORDS
    assert snap.feature_psi.max() < 0.1 and snap.score_psi < 0.1
    assert snap.feature_psi.max() < 0.01  # about (bins - 1) * (1/window + 1/reference)
    assert snap.out_of_range.max() < 0.002


def test_a_one_sigma_shift_of_one_feature_crosses_the_last_band_within_one_window():
    rng = np.random.default_rng(2)
    _, _, reference = normal_reference(rng)
    m = monitor(reference)
    stable = rng.normal(size=(DEFAULT_DRIFT_WINDOW_RECORDS, 8)).astype(np.float32)
    feed(m, stable, (stable.astype(np.float64) ** 2).mean(axis=1))
    shifted = rng.normal(size=(DEFAULT_DRIFT_WINDOW_RECORDS, 8)).astype(np.float32)
    shifted[:, 3] += 1.0
    crossed_after = None
    for start in range(0, len(shifted), 500):
        part = shifted[start : start + 500]
        m.observe(part, (part.astype(np.float64) ** 2).mean(axis=1))
        if crossed_after is None and m.snapshot().feature_psi[3] > 0.25:
            crossed_after = start + 500
    snap = m.snapshot()
    assert crossed_after is not None and crossed_after <= DEFAULT_DRIFT_WINDOW_RECORDS
    assert snap.feature_psi[3] > 0.7  # the whole window shifted: about 0.9
    assert np.delete(snap.feature_psi, 3).max() < 0.1
    print(f"1-sigma shift: PSI crossed 0.25 after {crossed_after} of a {len(shifted)} window")


def test_a_shift_in_one_of_fifty_features_is_attributed_to_it():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20_000, 50)).astype(np.float32)
    reference = build_reference(X, X[:, 0].astype(np.float64))
    m = monitor(reference)
    live = rng.normal(size=(DEFAULT_DRIFT_WINDOW_RECORDS, 50)).astype(np.float32)
    live[:, 37] = live[:, 37] * 1.0 + 1.0
    feed(m, live, live[:, 0].astype(np.float64))
    snap = m.snapshot()
    assert int(np.argmax(snap.feature_psi)) == 37 and snap.feature_psi[37] > 0.25
    assert np.delete(snap.feature_psi, 37).max() < 0.1


def test_score_drift_and_out_of_range_values():
    rng = np.random.default_rng(4)
    _, _, reference = normal_reference(rng)
    m = monitor(reference, window=1_000)
    live = rng.normal(size=(1_000, 8)).astype(np.float32)
    live[:100, 0] = 50.0  # 10% beyond anything seen in training
    feed(m, live, (live.astype(np.float64) ** 2).mean(axis=1) * 3)  # the scores rise
    snap = m.snapshot()
    assert snap.out_of_range[0] == pytest.approx(0.1) and snap.out_of_range[1:].max() < 0.01
    assert snap.score_psi > 0.25


def test_the_window_slides_by_records_and_by_time():
    rng = np.random.default_rng(5)
    _, _, reference = normal_reference(rng)
    now = [0.0]
    m = monitor(reference, window=1_000, seconds=60, clock=lambda: now[0])
    shifted = rng.normal(size=(1_000, 8)).astype(np.float32) + 2.0
    feed(m, shifted, np.zeros(1_000))
    assert m.snapshot().feature_psi.min() > 0.25
    stable = rng.normal(size=(1_000, 8)).astype(np.float32)
    feed(m, stable, np.zeros(1_000))  # the shifted records slid out
    snap = m.snapshot()
    assert snap.records == 1_000 and snap.feature_psi.max() < 0.1
    now[0] = 61.0
    assert m.snapshot().records == 0  # nothing newer than 60 s
    assert np.isnan(m.snapshot().feature_psi).all()


def test_a_reference_is_compact_and_survives_json():
    rng = np.random.default_rng(6)
    _, scores, reference = normal_reference(rng, n=50_000, d=20)
    restored = DriftReference.from_dict(reference.to_dict())
    assert restored == reference
    assert len(reference.feature_edges) == 20 and all(len(e) <= 9 for e in reference.feature_edges)
    assert sum(reference.feature_counts[0]) == 50_000 and reference.rows == 50_000
    assert len(reference.score_edges) <= 10 and sum(reference.score_counts) == len(scores)


def test_window_counts_equal_a_plain_binning_of_every_value():
    """The monitor's vectorised binning against searchsorted on each column: ties with edges,
    values on the training range's ends and outside it, features with fewer bins (ties)."""
    rng = np.random.default_rng(7)
    for trial in range(30):
        d = int(rng.integers(1, 12))
        # discrete training values (so live values hit edges exactly), some features constant-ish
        # float64 training values the float32 live values only approximate, or exact float32 ones
        dtype = np.float64 if trial % 2 else np.float32
        X_train = rng.integers(-5, 6, size=(400, d)).astype(dtype) * dtype(0.1)
        X_train[:, 0] = np.where(rng.random(400) < 0.9, 0.0, X_train[:, 0])
        reference = build_reference(X_train, rng.gamma(2.0, size=200))
        m = monitor(reference)
        live = rng.integers(-7, 8, size=(int(rng.integers(1, 300)), d)).astype(np.float32)
        live *= np.float32(0.1)
        scores = rng.gamma(2.0, size=len(live))
        m.observe(live, scores)
        snap = m.snapshot()
        for j in range(d):
            edges = np.asarray(reference.feature_edges[j])
            expected_counts = bin_counts(live[:, j].astype(np.float64), edges)
            expected_psi = psi(expected_counts, np.asarray(reference.feature_counts[j]))
            assert snap.feature_psi[j] == pytest.approx(expected_psi, rel=1e-12), (trial, j)
            values = live[:, j].astype(np.float64)
            outside = (values < reference.feature_low[j]) | (values > reference.feature_high[j])
            assert snap.out_of_range[j] == pytest.approx(outside.mean()), (trial, j)
        expected_score = psi(
            bin_counts(scores, np.asarray(reference.score_edges)),
            np.asarray(reference.score_counts),
        )
        assert snap.score_psi == pytest.approx(expected_score, rel=1e-12)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda r: r.pop("feature_edges"), "drift reference is malformed"),
        (lambda r: r.update(feature_edges="not a list"), "drift reference"),
        (lambda r: r["feature_counts"][0].append(7), "bins that do not fit their edges"),
        (lambda r: r["score_counts"].pop(), "bins that do not fit their edges"),
    ],
)
def test_a_corrupt_reference_in_bundle_json_refuses_the_bundle(tmp_path, tamper, message):
    # A hand-edited or truncated bundle.json: the worker refuses the bundle before serving it.
    directory = tmp_path / "m"
    write_distance_bundle(directory, drift_reference=standard_normal_reference())
    path = directory / "bundle.json"
    data = json.loads(path.read_text())
    tamper(data["drift_reference"])
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=message):
        read_metadata(directory)


def test_a_reference_for_other_features_refuses_the_bundle(tmp_path):
    directory = tmp_path / "m"
    write_distance_bundle(directory, drift_reference=standard_normal_reference())
    path = directory / "bundle.json"
    data = json.loads(path.read_text())
    wider = DriftReference.from_dict(data["drift_reference"])
    data["drift_reference"]["feature_edges"].append(list(wider.feature_edges[0]))
    data["drift_reference"]["feature_counts"].append(list(wider.feature_counts[0]))
    data["drift_reference"]["feature_low"].append(0.0)
    data["drift_reference"]["feature_high"].append(1.0)
    path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match="does not describe"):
        read_metadata(directory)

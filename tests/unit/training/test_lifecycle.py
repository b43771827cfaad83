"""Training options, reports, score/evaluate, the registry commands and the promotion gate."""

import csv
import json

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.metrics import average_precision_score, roc_auc_score

from tests.helpers import correlated, write_distance_bundle
from training.cli import main as train_main
from training.commands import parse_duration
from training.config import FitConfig
from training.data import Table
from training.evaluate import average_precision, roc_auc
from training.exceptions import TrainingError
from training.fit import calibrate, train
from training.promotion import (
    GateConfig,
    alert_count_tails,
    gate,
    promote,
    prune,
    register,
    rollback,
)
from training.publish import WritableRegistry
from worker.contract.bundle import read_metadata
from worker.contract.exceptions import BundleError
from worker.contract.scoring import Scorer

NAMES = ("a", "b", "c", "d")
QUICK = FitConfig(epochs=40, patience=8, seed=0)


def test_digits_nine_normal_one_anomalous_roc_auc_floor():
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    anomaly = 0
    normal = X[y != anomaly]
    order = np.random.default_rng(0).permutation(len(normal))
    result = train(normal[order[:1200]], FitConfig(seed=0))
    test = np.vstack([normal[order[1200:]], X[y == anomaly]])
    labels = np.r_[np.zeros(len(normal) - 1200), np.ones(int((y == anomaly).sum()))]
    scores = result.module(__import__("torch").as_tensor(test))[0].detach().numpy()
    assert roc_auc(labels, scores) >= 0.75


def test_rank_metrics_match_scikit_learn():
    rng = np.random.default_rng(1)
    labels = rng.random(500) < 0.1
    scores = rng.normal(size=500) + labels * 1.5
    scores[:50] = np.round(scores[:50])  # ties
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores)
    )


@pytest.mark.parametrize(
    "config",
    [
        FitConfig(epochs=30, hidden=(32, 16, 8), latent=2, activation="tanh", dropout=0.1, seed=0),
        FitConfig(epochs=30, noise=0.1, weight_decay=1e-4, activation="gelu", seed=0),
        FitConfig(epochs=30, threshold_method="mad", mad_k=4.0, trim_fraction=0.05, seed=0),
    ],
    ids=["deep", "denoising", "mad-trimmed"],
)
def test_model_options_train_a_servable_module(config):
    result = train(correlated(1500), config)
    score, errors, expected = result.module(__import__("torch").zeros(3, 4))
    assert score.shape == (3,) and errors.shape == (3, 4) and expected.shape == (3, 4)
    assert result.calibration.method == config.threshold_method
    if config.threshold_method == "mad":
        assert result.calibration.k == 4.0 and result.report["rows_trimmed"] == 60


def test_bce_for_features_in_unit_interval():
    X = np.clip(correlated(1000) / 8 + 0.5, 0, 1).astype(np.float32)
    result = train(X, FitConfig(epochs=20, loss="bce", seed=0))
    assert result.report["config"]["loss"] == "bce"
    with pytest.raises(TrainingError, match="bce"):
        train(correlated(100), FitConfig(loss="bce"))


def test_mad_threshold_rule():
    scores = np.r_[np.ones(99), 100.0]
    threshold, calibration = calibrate(scores, FitConfig(threshold_method="mad", mad_k=3.0))
    assert threshold == pytest.approx(1.0 + 3.0 * 1e-12)
    assert calibration.realised_alert_rate == pytest.approx(0.01)


def test_fit_report_score_and_evaluate_commands(tmp_path, capsys):
    X = correlated(2000)
    y = np.zeros(len(X), dtype=int)
    y[-100:] = 1
    X[-100:, 3] += 6
    np.savez(tmp_path / "data.npz", X=X, y=y)
    model = tmp_path / "model"
    assert (
        train_main(
            [
                "fit",
                "--input",
                str(tmp_path / "data.npz"),
                "--output",
                str(model),
                "--epochs",
                "40",
                "--no-progress",
            ]
        )
        == 0
    )
    report = json.loads((model / "report.json").read_text())
    assert report["rows"]["excluded"] == {"labelled_anomaly": 100}
    assert report["compression_ratio"] == 2.0 and report["history"]
    assert report["score"]["method"] == "combined"
    assert set(report["score"]["component_scale"]) == {"reconstruction", "neighbours", "tails"}
    assert (model / "report.png").stat().st_size > 10_000

    assert (
        train_main(
            [
                "score",
                "--model",
                str(model),
                "--input",
                str(tmp_path / "data.npz"),
                "--output",
                str(tmp_path / "scores.csv"),
            ]
        )
        == 0
    )
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [int(r["row"]) for r in rows] == list(range(len(X)))
    expected = Scorer.load(model, "cpu").score(X).scores
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-6)

    capsys.readouterr()
    assert (
        train_main(
            [
                "evaluate",
                "--model",
                str(model),
                "--input",
                str(tmp_path / "data.npz"),
                "--plot",
                str(tmp_path / "curves.png"),
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["roc_auc"] > 0.95 and result["recall"] > 0.9 and result["rows"] == 2000
    assert (tmp_path / "curves.png").is_file()


def candidate(registry, X, **config):
    return register(registry, Table(X, NAMES), FitConfig(**{**vars(QUICK), **config}))


def test_gate_accepts_a_good_candidate_and_rejects_bad_ones(tmp_path):
    registry = WritableRegistry.create(tmp_path / "registry")
    first = candidate(registry, correlated(3000, seed=1))
    sample = correlated(3000, seed=2)
    assert promote(registry, first, sample, GateConfig()).accepted
    assert registry.current() == first

    good = candidate(registry, correlated(3000, seed=3), seed=1)
    result = gate(registry, good, sample, GateConfig())
    assert result.accepted, result.reasons
    assert result.measurements["current_version"] == first
    assert result.measurements["sample_error"] < 0.2 and result.measurements["alert_rate"] < 0.03

    # Trained on other traffic (a different correlation): it alerts on everything normal.
    other = correlated(3000, seed=4)
    other[:, 2] = other[:, 0] - other[:, 1]
    bad = candidate(registry, other)
    result = promote(registry, bad, sample, GateConfig())
    assert not result.accepted and any("alert rate" in r for r in result.reasons)
    assert registry.current() == first
    assert registry.status(bad)["state"] == "rejected" and registry.status(bad)["reasons"]

    # Trained on noisier traffic: its threshold, meant for 1%, hardly ever fires on today's
    # traffic, so it would miss anomalies.
    lax = candidate(registry, correlated(3000, seed=5) * 3)
    result = gate(registry, lax, sample, GateConfig())
    assert not result.accepted and any("alert rate" in r for r in result.reasons)
    assert result.measurements["alert_rate"] < 0.01 / 3

    assert any("too small" in r for r in gate(registry, good, sample[:200], GateConfig()).reasons)


def test_alert_count_tails_match_a_threshold_set_on_a_finite_held_out_set():
    # The real process: a threshold from `calibrate` on 960 held-out normal scores, then the
    # alerts among 1,200 new normal rows. The threshold's own noise doubles the count's spread;
    # a binomial that ignores it puts P(count <= 3) at 0.2% (and the gate rejected 1 good model
    # in 30 on stationary traffic).
    rng = np.random.default_rng(0)
    held_out = rng.random((20_000, 960))
    thresholds = np.quantile(held_out, 0.99, axis=1, method="weibull")
    config = FitConfig(target_alert_rate=0.01)
    assert thresholds[:3] == pytest.approx([calibrate(h, config)[0] for h in held_out[:3]])
    counts = (rng.random((20_000, 1200)) > thresholds[:, None]).sum(axis=1)
    for k in (1, 3, 6, 12, 20, 25):
        fewer, more = alert_count_tails(k, 1200, 0.01, 960)
        assert fewer == pytest.approx((counts <= k).mean(), abs=0.01), k
        assert more == pytest.approx((counts >= k).mean(), abs=0.01), k
    assert alert_count_tails(3, 1200, 0.01, 960)[0] > 0.01
    assert alert_count_tails(0, 3000, 0.01, 960)[0] < 1e-5
    assert alert_count_tails(0, 0, 0.01, 960) == (1.0, 1.0)


def test_gate_rejects_an_alert_rate_off_by_more_than_chance_not_by_less(tmp_path):
    registry = WritableRegistry.create(tmp_path / "registry")
    registry.add("v1", lambda d: write_distance_bundle(d, threshold=4.0, calibration_rows=960))

    def sample(rows, alerting):  # distance bundle: a row of 3s scores 9, a row of 0s scores 0
        X = np.zeros((rows, 4), dtype=np.float32)
        X[:alerting] = 3.0
        return X

    # 3 alerts in 1,200 rows (0.25%, below 1% / 3): a threshold set on 960 rows does that 2%
    # of the time, so it is no evidence against the model.
    result = gate(registry, "v1", sample(1200, 3), GateConfig())
    assert result.accepted, result.reasons
    assert result.measurements["alert_rate_chance"] == pytest.approx(0.0227, abs=0.001)
    # None in 3,000 rows: 1 in a million.
    result = gate(registry, "v1", sample(3000, 0), GateConfig())
    assert not result.accepted
    assert "0 of 3000 rows" in result.reasons[0] and "960 calibration rows" in result.reasons[0]
    # 2% and 5% above: 5% is off by more than the factor of 3 and by far more than chance.
    assert gate(registry, "v1", sample(3000, 60), GateConfig()).accepted
    assert not gate(registry, "v1", sample(3000, 150), GateConfig()).accepted
    # A stricter user can ask for the plain factor: any significance level up to 1.
    assert not gate(registry, "v1", sample(1200, 3), GateConfig(rate_significance=0.5)).accepted


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rate_significance", 0.0, "--rate-significance must be in (0, 1), got 0.0"),
        ("max_rate_factor", 0.5, "--max-rate-factor must be >= 1, got 0.5"),
        ("max_error_increase", -1.0, "--max-error-increase must be >= 0, got -1.0"),
    ],
)
def test_gate_config_refuses_bad_values_in_one_line(field, value, message, tmp_path, capsys):
    with pytest.raises(TrainingError) as error:
        GateConfig(**{field: value})
    assert str(error.value) == message
    # The scheduler refuses at start (not once per period), before reading Kafka.
    flag = "--" + field.replace("_", "-")
    args = ["schedule", "--every", "1h", "--registry", str(tmp_path / "r"), flag, str(value)]
    assert train_main([*args, "--bootstrap-servers", "127.0.0.1:9"]) == 2
    assert capsys.readouterr().err == f"anomaly-train: {message}\n"
    assert not (tmp_path / "r").exists()


def test_gate_refuses_unloadable_and_incompatible_candidates(tmp_path):
    registry = WritableRegistry.create(tmp_path / "registry")
    first = candidate(registry, correlated(2000))
    promote(registry, first, None, GateConfig(), force=True)
    five = register(
        registry,
        Table(np.hstack([correlated(2000), correlated(2000)[:, :1]]), (*NAMES, "e")),
        QUICK,
    )
    assert any(
        "features differ" in r for r in gate(registry, five, correlated(2000), GateConfig()).reasons
    )
    broken = candidate(registry, correlated(2000))
    (registry.path_of(broken) / "model.pt").write_bytes(b"not a model")
    result = gate(registry, broken, correlated(2000), GateConfig())
    assert not result.accepted and result.reasons[0].startswith("does not load")
    with pytest.raises(BundleError):
        promote(registry, broken, None, GateConfig(), force=True)


def test_a_feature_change_is_promoted_only_when_asked_even_with_force(tmp_path, capsys):
    """8 features served, 6 promoted with --force: refused (exit 3) unless
    --allow-feature-change; the refusal names what changed."""
    registry = WritableRegistry.create(tmp_path / "registry")
    first = candidate(registry, correlated(2000))
    promote(registry, first, None, GateConfig(), force=True)
    X = correlated(2000)
    fewer = register(registry, Table(X[:, :3], NAMES[:3]), QUICK)
    args = ["models", "promote", fewer, "--registry", str(registry.root), "--force"]
    assert train_main(args) == 3
    out = capsys.readouterr().out
    assert f"{fewer}: rejected" in out and "4 -> 3 features: removed d" in out, out
    assert "--allow-feature-change" in out and registry.current() == first
    assert registry.status(fewer)["state"] == "rejected"
    assert train_main([*args, "--allow-feature-change"]) == 0
    assert registry.current() == fewer
    # Gated rather than forced: judged on its own (the models' errors cannot be compared).
    np.savez(tmp_path / "sample.npz", X=correlated(3000, seed=5))
    back = register(registry, Table(X, NAMES), QUICK)
    gated = ["models", "promote", back, "--registry", str(registry.root)]
    gated += ["--sample", str(tmp_path / "sample.npz"), "--allow-feature-change"]
    assert train_main(gated) == 0, capsys.readouterr().out
    assert registry.status(back)["measurements"]["feature_change"] == "3 -> 4 features: added d"


def test_rollback_and_prune(tmp_path):
    registry = WritableRegistry.create(tmp_path / "registry")
    versions = [candidate(registry, correlated(500, seed=i)) for i in range(5)]
    promote(registry, versions[1], None, GateConfig(), force=True)
    promote(registry, versions[3], None, GateConfig(), force=True)
    assert rollback(registry) == versions[1] and registry.current() == versions[1]
    assert registry.status(versions[3])["state"] == "rolled_back"
    removed = prune(registry, keep=1)
    # kept: the newest, the current one and the rollback target
    assert sorted(set(versions) - set(removed)) == sorted({versions[4], versions[1], versions[3]})
    assert read_metadata(registry.path_of(registry.current())).version == versions[1]


def test_models_commands(tmp_path, capsys):
    np.savez(tmp_path / "train.npz", X=correlated(2000))
    np.savez(tmp_path / "sample.npz", X=correlated(3000, seed=7))
    reg = str(tmp_path / "registry")
    assert (
        train_main(
            [
                "fit",
                "--input",
                str(tmp_path / "train.npz"),
                "--registry",
                reg,
                "--epochs",
                "30",
                "--no-progress",
                "--promote",
                "--sample",
                str(tmp_path / "sample.npz"),
            ]
        )
        == 0
    )
    version = capsys.readouterr().out.splitlines()[0]
    assert train_main(["models", "list", "--registry", reg]) == 0
    listing = capsys.readouterr().out
    assert f"* {version}" in listing
    assert "promoted" in listing
    assert train_main(["models", "promote", "nope", "--registry", reg, "--force"]) == 2
    assert parse_duration("6h") == 21600 and parse_duration("90s") == 90
    with pytest.raises(TrainingError):
        parse_duration("soon")


def test_ensemble_normalises_each_feature_and_member():
    X = correlated(1500)
    X[:, 0] *= 100  # a feature on another scale: its error must not dominate the score
    config = FitConfig(epochs=20, ensemble=3, scaling="minmax", score="reconstruction", seed=0)
    result = train(X, config)
    module = result.module
    assert len(module.members) == 3 and tuple(module.error_scale.shape) == (3, 4)
    with __import__("torch").no_grad():
        score, errors, expected = module(__import__("torch").as_tensor(X))
    # on training data every feature's normalised error is of the same order
    per_feature = errors.mean(dim=0)
    assert float(per_feature.max() / per_feature.min()) < 5
    assert abs(float(score.median()) - 1.0) < 0.5
    assert expected.shape == (1500, 4)


def test_retention_keeps_current_rollback_target_newest_and_one_rejected(tmp_path):
    from training.promotion import retain

    registry = WritableRegistry.create(tmp_path / "registry")
    versions = [candidate(registry, correlated(500, seed=i)) for i in range(8)]
    promote(registry, versions[0], None, GateConfig(), force=True)
    promote(registry, versions[2], None, GateConfig(), force=True)
    for rejected in (versions[3], versions[5], versions[6]):
        registry.set_status(rejected, "rejected", reasons=["test"])
    removed = retain(registry, keep=2)
    kept = set(registry.versions())
    # current (2), its rollback target (0), the newest two (6, 7); of the rejected only the
    # newest (6) stays; 1, 3, 4, 5 go.
    assert kept == {versions[i] for i in (0, 2, 6, 7)}
    assert sorted(removed) == sorted(versions[i] for i in (1, 3, 4, 5))
    assert registry.current() == versions[2]

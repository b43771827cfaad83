"""Per-entity baselines in one bundle (``anomaly-train fit --per-entity``): each entity judged
against its own normal, the generic baseline for the rest, routed inside a batch."""

import json

import numpy as np
import pytest
import torch

from tests.fakes import chunk, make_pipeline, messages, run_once
from tests.helpers import NAMES, record
from training.baselines import choose_entities
from training.cli import main as train_main
from training.config import FitConfig
from training.data import Table
from training.evaluate import score_table
from training.fit import fit_bundle
from worker.contract.bundle import BundleMetadata, read_metadata
from worker.contract.exceptions import BundleError
from worker.contract.scoring import BaselineRouter, Scorer
from worker.observe.metrics import WorkerMetrics

#: Each entity's normal: a different level on every feature ("d" has too few rows).
LEVELS = {"a": 0.0, "b": 6.0, "c": -6.0, "d": 12.0}
ROWS = {"a": 600, "b": 600, "c": 600, "d": 100}


def traffic(seed: int, rows: dict[str, int] = ROWS) -> Table:
    rng = np.random.default_rng(seed)
    X, entities = [], []
    for entity, n in rows.items():
        X.append(LEVELS[entity] + rng.normal(size=(n, len(NAMES))))
        entities += [entity] * n
    return Table(np.concatenate(X).astype(np.float32), NAMES, entities=entities)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    directory = tmp_path_factory.mktemp("per-entity") / "bundle"
    config = FitConfig(per_entity=True, epochs=15, seed=0, min_entity_rows=500)
    fit_bundle(traffic(0), directory, config)
    return directory


@pytest.fixture(scope="module")
def scorer(bundle):
    return Scorer.load(bundle, "cpu")


def test_entities_with_enough_rows_get_a_baseline_in_the_bundle(bundle, scorer):
    meta = read_metadata(bundle)
    assert meta.baselines == ("a", "b", "c")  # "d" has 100 rows, fewer than 500
    assert BundleMetadata.from_json(meta.to_json()).baselines == ("a", "b", "c")
    assert meta.training["score"]["baselines"]["entities"] == 3


def test_each_entity_is_judged_against_its_own_normal(scorer):
    threshold = scorer.metadata.threshold
    fleet_normal = np.full((1, len(NAMES)), 6.0, dtype=np.float32)  # b's everyday level
    as_b = scorer.score(fleet_normal, ["b"]).scores[0]
    as_a = scorer.score(fleet_normal, ["a"]).scores[0]
    generic = scorer.score(fleet_normal, [None]).scores[0]
    assert as_b < threshold  # b's own normal
    assert as_a > 5 * threshold  # a never runs at b's level
    assert generic < as_a / 5  # the generic baseline has seen the whole fleet: it misses it


def test_fresh_normal_rows_of_each_entity_alert_near_the_target_rate(scorer):
    fresh = traffic(1, {"a": 2000, "b": 2000, "c": 2000})
    scored = scorer.score(fresh.X, fresh.entities)
    rate = float((scored.scores > scorer.metadata.threshold).mean())
    assert rate < 0.03  # calibrated at 1% on held-out rows of the same entities
    assert (scored.baseline >= 0).all()


def test_rows_are_routed_inside_a_batch_whatever_it_mixes(scorer):
    rng = np.random.default_rng(2)
    entities = ["a", "b", None, "zzz", "d", "c", "b", "", "a"] * 70
    X = rng.normal(scale=6.0, size=(len(entities), len(NAMES))).astype(np.float32)
    together = scorer.score(X, entities)
    alone = np.array([scorer.score(X[i : i + 1], entities[i : i + 1]).scores[0] for i in range(9)])
    np.testing.assert_allclose(together.scores[:9], alone, rtol=1e-5, atol=1e-6)
    expected_index = {"a": 0, "b": 1, "c": 2}
    assert together.baseline.tolist() == [expected_index.get(e, -1) for e in entities]
    generic = scorer.score(X).scores  # no entities: the generic baseline for every row
    unrouted = together.baseline < 0
    np.testing.assert_allclose(together.scores[unrouted], generic[unrouted], rtol=1e-5)
    errors, expected = together.details(np.arange(len(X)))
    np.testing.assert_allclose(errors.sum(axis=1), together.scores, rtol=1e-4)
    assert np.isfinite(expected).all()


def test_anomaly_train_score_routes_rows_by_their_entity(bundle, scorer):
    table = traffic(3, {"a": 50, "b": 50, "d": 50})
    scores, _ = score_table(bundle, table)
    np.testing.assert_allclose(scores, scorer.score(table.X, table.entities).scores, rtol=1e-6)


def test_the_router_is_a_vectorised_lookup():
    router = BaselineRouter(("alpha", "beta", "gamma"))
    index = router.route(["gamma", None, "alph", "beta", "zeta", "", "alpha", "beta\x00"])
    assert index.tolist() == [2, -1, -1, 1, -1, -1, 0, -1]  # "beta\x00" is not "beta"


def test_which_entities_get_a_baseline():
    entities = ["x"] * 30 + ["y"] * 30 + ["z"] * 40 + [None] * 100 + ["w"] * 10
    config = FitConfig(min_entity_rows=20, max_baselines=2)
    assert choose_entities(entities, config) == ["x", "z"]  # most rows, ties by name
    assert choose_entities(entities, FitConfig(min_entity_rows=35)) == ["z"]


def test_alerts_and_scores_say_which_baseline_scored_them(tmp_path, bundle):
    batch = chunk(
        messages(
            0,
            [
                record([6.0] * 4, id="b-as-a", entity="a"),
                record([6.0] * 4, id="b-as-b", entity="b"),
                record([40.0] * 4, id="far-unseen", entity="new-host"),
            ],
        )
    )
    metrics = WorkerMetrics()
    pipeline, _consumer, producer, _log = make_pipeline(
        tmp_path, [batch], bundle=bundle, metrics=metrics, scores_topic="scores"
    )
    run_once(pipeline)
    sent = {(t, json.loads(v)["id"]): json.loads(v) for t, _k, v, _ in producer.sent}
    assert sent[("alerts", "b-as-a")]["baseline"] == "entity"
    assert sent[("alerts", "far-unseen")]["baseline"] == "generic"
    assert ("alerts", "b-as-b") not in sent
    assert sent[("scores", "b-as-b")]["baseline"] == "entity"
    assert sent[("scores", "b-as-b")]["alert"] is False
    samples = {
        (s.name, s.labels.get("baseline")): s.value
        for family in metrics.registry.collect()
        for s in family.samples
    }
    assert samples[("anomaly_records_scored_by_baseline_total", "entity")] == 2
    assert samples[("anomaly_records_scored_by_baseline_total", "generic")] == 1
    assert samples[("anomaly_model_entity_baselines", None)] == 3


def test_a_bundle_listing_baselines_its_module_cannot_route_is_refused(tmp_path, bundle):
    from tests.helpers import write_distance_bundle

    meta = write_distance_bundle(tmp_path)
    text = json.loads((tmp_path / "bundle.json").read_text())
    text["baselines"] = ["a"]
    (tmp_path / "bundle.json").write_text(json.dumps(text))
    with pytest.raises(BundleError, match="no routed method"):
        Scorer.load(tmp_path, "cpu")
    text["baselines"] = ["b", "a"]
    with pytest.raises(BundleError, match="sorted"):
        BundleMetadata.from_json(json.dumps(text))
    assert meta.baselines == ()


def test_per_entity_without_entities_fails_with_one_line(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    path.write_text("cpu,mem\n" + "\n".join(f"{i},{i % 7}" for i in range(200)) + "\n")
    code = train_main(
        ["fit", "--input", str(path), "--output", str(tmp_path / "b"), "--per-entity"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "entity" in err[0]
    bad = train_main(
        ["fit", "--input", str(path), "--output", str(tmp_path / "b"), "--entity-memory-rows", "6"]
    )
    assert bad == 2 and "subsets" in capsys.readouterr().err


def test_the_routed_module_survives_torchscript_save_and_load(bundle):
    module = torch.jit.load(str(bundle / "model.pt"))
    x = torch.zeros((3, len(NAMES)))
    score, per_feature, expected = module.routed(x, torch.tensor([0, -1, 2]))
    assert score.shape == (3,) and per_feature.shape == (3, 4) and expected.shape == (3, 4)


def test_per_entity_without_any_entity_rich_enough_says_so_and_writes_a_generic_bundle(
    tmp_path, caplog
):
    config = FitConfig(per_entity=True, epochs=2, seed=0)  # 1,000 rows needed, 600 given
    with caplog.at_level("WARNING"):
        meta = fit_bundle(traffic(0), tmp_path / "b", config)
    assert meta.baselines == ()
    assert "no entity has 1000 normal rows" in caplog.text
    scorer = Scorer.load(tmp_path / "b", "cpu")
    assert scorer.router is None and scorer.score(traffic(1).X[:5], ["a"] * 5).baseline is None

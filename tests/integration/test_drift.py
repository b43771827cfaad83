"""A worker fed stable, then shifted traffic exports drift crossing its band, for the shifted
feature only (``anomaly_feature_drift``, ``anomaly_score_drift``)."""

import numpy as np
import pytest

from tests.helpers import NAMES, record, standard_normal_reference, write_distance_bundle
from tests.integration.kafka_helpers import produce, wait_for
from training.drift_check import drift_from_metrics

pytestmark = pytest.mark.integration

WINDOW = 2_000


def traffic(rng, n, shift=0.0, start=0):
    X = rng.normal(size=(n, len(NAMES)))
    X[:, 1] += shift  # "mem" moves by ``shift`` standard deviations
    return [record(row.round(5).tolist(), id=f"r{start + i}") for i, row in enumerate(X)]


def test_drift_crosses_the_band_for_the_shifted_feature_only(
    kafka_bootstrap, topics, start_worker, tmp_path
):
    model = tmp_path / "drift-model"
    write_distance_bundle(model, threshold=1e6, drift_reference=standard_normal_reference())
    worker = start_worker(
        ANOMALY_MODEL_PATH=str(model),
        ANOMALY_DRIFT_WINDOW_RECORDS=str(WINDOW),
        ANOMALY_BATCH_MAX_RECORDS="250",
    )
    worker.wait_ready()
    rng = np.random.default_rng(1)

    def drift(feature):
        return worker.metric("anomaly_feature_drift", {"feature": feature})

    produce(kafka_bootstrap, topics.input, traffic(rng, 3_000))
    wait_for(lambda: worker.metric("anomaly_records_consumed_total") == 3_000, 60)
    assert WINDOW <= worker.metric("anomaly_drift_window_records") <= WINDOW + 250
    stable = {name: drift(name) for name in NAMES}
    assert max(stable.values()) < 0.1, stable
    stable_score = worker.metric("anomaly_score_drift")
    assert stable_score < 0.1

    produce(kafka_bootstrap, topics.input, traffic(rng, 3_000, shift=1.0, start=3_000))
    wait_for(lambda: worker.metric("anomaly_records_consumed_total") == 6_000, 60)
    shifted = {name: drift(name) for name in NAMES}
    assert shifted["mem"] > 0.25, shifted
    assert max(v for k, v in shifted.items() if k != "mem") < 0.1, shifted
    # The score (distance from 0) moves too, less: one feature of four shifted.
    assert worker.metric("anomaly_score_drift") > max(3 * stable_score, 0.03)
    # What ``anomaly-train retrain --if-drift --drift-from URL`` reads:
    drift = drift_from_metrics([f"http://127.0.0.1:{worker.port}/metrics"])
    assert drift.feature == "mem" and drift.exceeds(0.25) and drift.records >= WINDOW
    assert worker.terminate() == 0


def test_a_model_without_a_reference_serves_and_says_drift_is_not_measured(
    kafka_bootstrap, topics, start_worker
):
    worker = start_worker()  # the plain distance bundle: written without a reference
    worker.wait_ready()
    produce(kafka_bootstrap, topics.input, [record([0, 0, 0, 0])] * 10)
    wait_for(lambda: worker.metric("anomaly_records_consumed_total") == 10, 60)
    assert worker.metric("anomaly_feature_drift", {"feature": "cpu"}) is None
    assert "carries no drift reference" in worker.log()
    assert worker.terminate() == 0

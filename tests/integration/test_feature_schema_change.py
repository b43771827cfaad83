"""A model of other features than the producers send: promotion refuses it unless asked, a
running worker refuses it once (not at every poll), and a worker restarted on it says that it
dead-letters everything instead of answering ready."""

import pytest

from tests.helpers import NAMES, record, write_distance_bundle
from tests.integration.kafka_helpers import produce, wait_committed, wait_for
from training.cli import main as train_main
from training.publish import WritableRegistry

pytestmark = pytest.mark.integration


def test_promoting_and_serving_a_model_of_other_features(
    kafka_bootstrap, topics, start_worker, tmp_path, capsys
):
    registry = WritableRegistry.create(tmp_path / "registry")
    registry.add("v4", lambda d: write_distance_bundle(d, version="v4"))
    fewer = NAMES[:3]
    registry.add("v3", lambda d: write_distance_bundle(d, names=fewer, version="v3"))
    registry.set_current("v4", "initial")
    env = {"ANOMALY_MODEL_PATH": str(registry.root), "ANOMALY_MODEL_POLL_SECONDS": "0.2"}
    worker = start_worker(**env)
    worker.wait_ready()

    promote = ["models", "promote", "v3", "--registry", str(registry.root), "--force"]
    assert train_main(promote) == 3  # refused, even forced
    out = capsys.readouterr().out
    assert "4 -> 3 features: removed net" in out and registry.current() == "v4", out
    assert train_main([*promote, "--allow-feature-change"]) == 0
    assert registry.current() == "v3"

    wait_for(lambda: worker.metric("anomaly_model_reloads_total", {"result": "refused"}), 20)
    ends = produce(kafka_bootstrap, topics.input, [record([0, 0, 0, 0])] * 50)
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
    assert worker.metric("anomaly_model_info", {"version": "v4"}) == 1  # v4 keeps serving
    assert worker.metric("anomaly_records_scored_total") == 50
    log = worker.log()
    assert log.count("model v3 refused") == 1 and "4 -> 3 features: removed net" in log
    assert log.count("model v3 loaded") == 0  # refused from its bundle.json, never loaded
    assert worker.terminate() == 0

    restarted = start_worker(**env)  # serves v3 now; the producers still send 4 features
    restarted.wait_ready()
    assert "serving model v3: 3 features (cpu, mem, disk)" in restarted.log()
    more = produce(kafka_bootstrap, topics.input, [record([0, 0, 0, 0])] * 150)
    for partition, end in more.items():
        ends[partition] = max(ends.get(partition, 0), end)
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
    status, reason = restarted.http("/readyz")
    assert status == 503, reason
    assert "model v3 refuses every record for its features: it expects 3 (cpu, mem, disk)" in (
        reason
    )
    assert "expected 3 features, got 4" in reason
    assert (
        restarted.metric("anomaly_records_invalid_total", {"reason": "wrong_feature_count"}) == 150
    )
    assert "every one goes to the dead-letter topic" in restarted.log()
    assert restarted.http("/healthz")[0] == 200  # alive: a restart would not help
    assert restarted.terminate() == 0

"""Per-entity baselines end to end: retrained from a Kafka window (``--per-entity``), gated
with each sampled row routed to its entity's baseline, promoted, and served by a worker that
judges each entity against its own normal."""

import json
import random

import pytest

from tests.helpers import NAMES, record
from tests.integration.kafka_helpers import produce, read_topic, wait_for
from training.cli import main as train_main
from training.publish import WritableRegistry

pytestmark = pytest.mark.integration

#: Each host's everyday level on every feature.
LEVELS = {"a": 0.0, "b": 6.0, "c": -6.0}


def test_a_retrained_per_entity_model_judges_each_entity_against_its_own_normal(
    kafka_bootstrap, topics, start_worker, tmp_path, capsys
):
    rng = random.Random(5)
    window = [
        record([round(LEVELS[e] + rng.gauss(0, 1), 4) for _ in NAMES], id=f"{e}{i}", entity=e)
        for e in LEVELS
        for i in range(1700)  # the newest fifth (1,020 rows) is the gate's sample
    ]
    rng.shuffle(window)
    produce(kafka_bootstrap, topics.input, window)
    registry = WritableRegistry.create(tmp_path / "registry")
    code = train_main(
        [
            "retrain",
            *("--registry", str(registry.root), "--bootstrap-servers", kafka_bootstrap),
            *("--topic", topics.input, "--alert-topic", topics.alerts, "--last", "100000"),
            *("--per-entity", "--epochs", "15", "--no-progress"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    version = registry.current()
    assert version is not None and registry.status(version)["state"] == "promoted", out
    meta = json.loads((registry.path_of(version) / "bundle.json").read_text())
    assert meta["baselines"] == ["a", "b", "c"]

    worker = start_worker(ANOMALY_MODEL_PATH=str(registry.root))
    worker.wait_ready()
    assert worker.metric("anomaly_model_entity_baselines") == 3
    probes = [
        record([6.0] * 4, id="probe-b-level-on-a", entity="a"),  # b's normal, a's anomaly
        record([6.0] * 4, id="probe-b-level-on-b", entity="b"),
        record([40.0] * 4, id="probe-far-on-new-host", entity="new-host"),
    ]
    produce(kafka_bootstrap, topics.input, probes)
    wait_for(
        lambda: (worker.metric("anomaly_records_scored_total") or 0) >= len(window) + 3,
        60,
        message="every record scored",
    )
    alerts = [json.loads(r.value) for r in read_topic(kafka_bootstrap, topics.alerts, 2)]
    by_id = {a["id"]: a for a in alerts if a["id"].startswith("probe")}
    assert by_id["probe-b-level-on-a"]["baseline"] == "entity"
    assert by_id["probe-far-on-new-host"]["baseline"] == "generic"
    assert "probe-b-level-on-b" not in by_id
    scored_own = worker.metric("anomaly_records_scored_by_baseline_total", {"baseline": "entity"})
    assert scored_own == len(window) + 2

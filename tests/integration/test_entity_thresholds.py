"""A real worker in ANOMALY_THRESHOLD_MODE=entity_recent alerts on exactly the rows
``anomaly-train score --threshold-mode entity_recent`` marks, each entity against its own past."""

import csv
import json

import numpy as np
import pytest

from tests.helpers import NAMES, record
from tests.integration.kafka_helpers import produce, read_topic, wait_committed
from training.cli import main as train_main

pytestmark = pytest.mark.integration


def test_the_worker_decides_as_anomaly_train_score_does(
    kafka_bootstrap, topics, start_worker, model, tmp_path
):
    rng = np.random.default_rng(5)
    n = 2_000
    entities = [f"host-{i}" for i in rng.integers(0, 5, size=n)]
    level = {f"host-{i}": 0.5 + i for i in range(5)}  # host-3 and host-4 sit above threshold 4
    X = np.array([rng.normal(0, level[e], size=len(NAMES)) for e in entities]).round(4)
    with (tmp_path / "rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "entity", *NAMES])
        for i, (entity, row) in enumerate(zip(entities, X.tolist(), strict=True)):
            writer.writerow([f"r{i}", entity, *row])
    assert (
        train_main(
            [
                "score",
                *("--model", str(model), "--input", str(tmp_path / "rows.csv")),
                *("--output", str(tmp_path / "scores.csv"), "--threshold-mode", "entity_recent"),
                *("--recent-window", "300", "--recent-warmup", "100"),
            ]
        )
        == 0
    )
    offline = sorted(
        f"r{row['row']}"
        for row in csv.DictReader((tmp_path / "scores.csv").open())
        if row["alert"] == "1"
    )
    values = [
        record(row, id=f"r{i}", entity=entity)
        for i, (entity, row) in enumerate(zip(entities, X.tolist(), strict=True))
    ]
    keys = [entity.encode() for entity in entities]  # one partition per entity: its order kept
    ends = produce(kafka_bootstrap, topics.input, values, keys)
    worker = start_worker(
        ANOMALY_THRESHOLD_MODE="entity_recent",
        ANOMALY_RECENT_WINDOW_RECORDS="300",
        ANOMALY_RECENT_WARMUP_RECORDS="100",
    )
    worker.wait_ready()
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends, 60)
    alerts = [json.loads(a.value) for a in read_topic(kafka_bootstrap, topics.alerts, len(offline))]
    assert sorted(a["id"] for a in alerts) == offline and len(offline) > 20
    assert {a["threshold_source"] for a in alerts} == {"entity_recent", "model_warming_up"}
    # Warmed up, each entity alerts on about the model's 1%, where the model's threshold
    # alone would page for most records of host-3 and host-4.
    warmed = [a for a in alerts if a["threshold_source"] == "entity_recent"]
    assert len(warmed) < 0.03 * (n - 5 * 100)
    assert int(((X**2).mean(axis=1) > 4.0).sum()) > 0.4 * n
    assert worker.terminate() == 0

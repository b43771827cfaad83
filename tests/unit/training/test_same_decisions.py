"""``anomaly-train score`` (rows in time order) and the worker, in entity_recent mode, decide
the same rows the same way, whatever the worker's micro-batches."""

import csv
import json
import threading

import numpy as np

from tests.fakes import chunk, make_pipeline, messages
from tests.helpers import NAMES, record, write_distance_bundle
from training.cli import main as train_main


def test_the_worker_and_anomaly_train_score_alert_on_the_same_rows(tmp_path):
    rng = np.random.default_rng(3)
    n = 1_500
    entities = [f"host-{i}" for i in rng.integers(0, 4, size=n)]
    level = {"host-0": 0.5, "host-1": 1.0, "host-2": 2.0, "host-3": 3.0}  # different normals
    X = np.array([rng.normal(0, level[e], size=len(NAMES)) for e in entities]).round(4)
    X[rng.random(n) < 0.02] *= 4  # a few outliers
    with (tmp_path / "rows.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "entity", *NAMES])
        for i, (entity, row) in enumerate(zip(entities, X.tolist(), strict=True)):
            writer.writerow([f"r{i}", entity, *row])
    write_distance_bundle(tmp_path / "model", threshold=4.0)
    assert (
        train_main(
            [
                "score",
                *("--model", str(tmp_path / "model"), "--input", str(tmp_path / "rows.csv")),
                *("--output", str(tmp_path / "scores.csv"), "--threshold-mode", "entity_recent"),
                *("--recent-window", "200", "--recent-warmup", "50"),
            ]
        )
        == 0
    )
    offline = [
        f"r{row['row']}"
        for row in csv.DictReader((tmp_path / "scores.csv").open())
        if row["alert"] == "1"
    ]
    values = [
        record(row, id=f"r{i}", entity=entity)
        for i, (entity, row) in enumerate(zip(entities, X.tolist(), strict=True))
    ]
    cuts = np.cumsum(rng.integers(1, 120, size=n))
    batches, start = [], 0
    for end in [*cuts[cuts < n].tolist(), n]:
        batches.append(chunk(messages(0, values[start:end], start=start)))
        start = end
    pipeline, _, producer, _ = make_pipeline(
        tmp_path / "worker",
        batches,
        batch_max_records=1_000,
        threshold_mode="entity_recent",
        recent_window_records=200,
        recent_warmup_records=50,
        recent_max_entities=1_000,
    )
    for _ in batches:
        pipeline._collect(threading.Event())
        pipeline._process_batch()
    alerts = [json.loads(s[2]) for s in producer.sent if s[0] == "alerts"]
    assert sorted(a["id"] for a in alerts) == sorted(offline) and len(offline) > 20
    sources = {a["threshold_source"] for a in alerts}
    assert sources == {"entity_recent", "model_warming_up"}
    # Each entity alerts on about the model's 1% once warmed up, whatever its level.
    warmed = [a for a in alerts if a["threshold_source"] == "entity_recent"]
    assert len(warmed) < 0.04 * n

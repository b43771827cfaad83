"""ANOMALY_SCORES_TOPIC against a real broker: every decodable record's score, exactly once
under ``exactly_once`` even across a SIGKILL mid-transaction, agreeing with the alerts topic;
one message per record or (``ANOMALY_SCORES_FORMAT=batch``) per micro-batch and partition."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from tests.helpers import NAMES, record
from tests.integration.kafka_helpers import (
    create_topics,
    produce,
    read_log,
    wait_committed,
    wait_for,
)
from worker.core.scores import expand_scores

pytestmark = pytest.mark.integration


def rows(rng: np.random.Generator, start: int, n: int) -> tuple[list[bytes], dict[str, float]]:
    """``n`` records of five entities, every 97th undecodable; the distance model's score
    (mean squared value) of each decodable one by id."""
    values, expected = [], {}
    for i in range(start, start + n):
        if i % 97 == 0:
            values.append(b"{not json")
            continue
        x = rng.normal(0, 1.0 + (i % 5), size=len(NAMES)).round(4)
        values.append(record(x.tolist(), id=f"r{i}", entity=f"host-{i % 5}"))
        expected[f"r{i}"] = float((x**2).mean())
    return values, expected


@pytest.mark.parametrize(
    ("kafka_client", "scores_format"),
    [("kafka-python", "record"), ("confluent", "record"), ("kafka-python", "batch")],
    indirect=["kafka_client"],
)
def test_every_score_is_committed_once_across_a_sigkill(
    kafka_bootstrap, topics, start_worker, scores_format
):
    scores_topic = f"{topics.input}-scores"
    create_topics(kafka_bootstrap, [scores_topic], partitions=3)
    env = {
        "ANOMALY_PROCESSING_GUARANTEE": "exactly_once",
        "ANOMALY_TRANSACTIONAL_ID": f"{topics.group}-scores",
        "ANOMALY_SCORES_TOPIC": scores_topic,
        "ANOMALY_SCORES_FORMAT": scores_format,
        "ANOMALY_BATCH_MAX_RECORDS": "200",
        # A transaction stays open up to 2 s while there is a backlog: the kill lands in one.
        "ANOMALY_COMMIT_INTERVAL_SECONDS": "2",
    }
    rng = np.random.default_rng(3)
    first, expected = rows(rng, 0, 3_000)
    ends = produce(kafka_bootstrap, topics.input, first)
    worker = start_worker(**env)
    worker.wait_ready(60)
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends, 60)
    consumed = worker.metric("anomaly_records_consumed_total") or 0
    second, more = rows(rng, 3_000, 30_000)
    expected |= more
    ends = produce(kafka_bootstrap, topics.input, second)
    wait_for(
        lambda: (worker.metric("anomaly_records_consumed_total") or 0) > consumed + 2_000,
        60,
        0.02,
        "the worker to be draining the backlog",
    )
    worker.kill()
    worker = start_worker(**env)  # aborts what the killed one left open
    worker.wait_ready(60)
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends, 120)
    assert worker.terminate() == 0, worker.log()[-3000:]

    scores = read_log(kafka_bootstrap, scores_topic)
    alerts = read_log(kafka_bootstrap, topics.alerts)
    assert not scores.open and not alerts.open, "a transaction left open"
    bodies = [body for r in scores.committed for body in expand_scores(r.value)]
    counted = Counter(b["id"] for b in bodies)
    assert set(counted) == set(expected), "a decodable record without a committed score"
    assert max(counted.values()) == 1, "a score committed twice"
    assert scores.aborted, "the kill landed after the last commit: nothing was tested"
    for body in bodies:
        assert body["score"] == pytest.approx(expected[body["id"]], rel=1e-4, abs=1e-5)
        assert body["threshold"] == 4.0 and body["alert"] == (body["score"] > 4.0)
        assert body["entity"] == f"host-{int(body['id'][1:]) % 5}"
        assert body["source"]["topic"] == topics.input
    # The scores topic and the alerts topic tell the same story.
    alerted = Counter(json.loads(r.value)["id"] for r in alerts.committed)
    assert alerted == Counter(b["id"] for b in bodies if b["alert"])
    keys = {r.key for r in scores.committed}
    if scores_format == "record":
        # Keyed by entity, like alerts: one entity's scores stay in order in one partition.
        assert keys == {f"host-{i}".encode() for i in range(5)}
    else:
        # Keyed by input partition, so also in order per entity; far fewer messages.
        assert keys <= {f"{topics.input}:{p}".encode() for p in range(3)}
        assert len(scores.committed) * 20 < len(bodies)

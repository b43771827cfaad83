"""Normal, anomalous and malformed records through a real worker process and a real broker."""

import json
import random
import time

import pytest

from tests.helpers import NAMES, record
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import produce, read_topic, wait_committed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]

MALFORMED = {
    b"not json at all": "invalid_json",
    b"[1, 2, 3, 4]": "not_an_object",
    b'{"id": "no-features"}': "missing_features",
    record([1, 2, 3]): "wrong_feature_count",
    record([1, "2", 3, 4]): "non_numeric_feature",
    # "gpu" is ignored (ANOMALY_UNKNOWN_FEATURES=ignore, the default); "net" is missing.
    record({"cpu": 1, "mem": 1, "disk": 1, "gpu": 1}): "missing_feature",
    b'{"features": [1, NaN, 0, 0]}': "non_finite",
    b'{"features": [0, 0, 0, 0], "x": "\xff\xfe"}': "invalid_utf8",
    record([0, 0, 0, 0], ts="not a time"): "invalid_field",
}


def normal_features(rng):
    return [round(rng.uniform(-1, 1), 4) for _ in NAMES]


def test_scores_alerts_dead_letters_and_commits(kafka_bootstrap, topics, start_worker):
    rng = random.Random(7)
    values, keys, anomalies = [], [], set()
    event_ts = round(time.time(), 3)  # recent: its latency is measured (a day-old one is not)
    for i in range(600):
        if i % 30 == 0:
            values.append(
                record([5.0, 5.0, 5.0, 5.0], id=f"a{i}", entity=f"host-{i % 7}", ts=event_ts)
            )
            anomalies.add(f"a{i}")
        elif i % 2:
            values.append(record(normal_features(rng), id=f"n{i}"))
        else:  # named features, any order, no id
            values.append(record(dict(zip(reversed(NAMES), normal_features(rng), strict=True))))
        keys.append(f"k{i}".encode())
    for i, bad in enumerate(MALFORMED):
        values.insert(17 * i + 3, bad)
        keys.insert(17 * i + 3, f"bad{i}".encode())
    ends = produce(kafka_bootstrap, topics.input, values, keys)
    total = len(values)

    worker = start_worker()
    worker.wait_ready()
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends)

    alerts = read_topic(kafka_bootstrap, topics.alerts, expect=len(anomalies))
    bodies = [json.loads(a.value) for a in alerts]
    assert sorted(b["id"] for b in bodies) == sorted(anomalies)  # every anomaly, once, nothing else
    for alert, body in zip(alerts, bodies, strict=True):
        assert alert.key == body["entity"].encode()
        assert body["score"] == pytest.approx(25.0) and body["threshold"] == 4.0
        assert body["score_ratio"] == pytest.approx(6.25)
        assert body["model_version"] == "test-v1" and body["ts"] == event_ts
        assert [f["name"] for f in body["top_features"]] == list(NAMES[:3])
        assert body["top_features"][0] == {
            "name": "cpu",
            "value": 5.0,
            "expected": 0.0,
            "error": 25.0,
        }
        assert body["source"]["topic"] == topics.input

    letters = read_topic(kafka_bootstrap, topics.dlq, expect=len(MALFORMED))
    assert sorted(dict(x.headers)["error.reason"].decode() for x in letters) == sorted(
        MALFORMED.values()
    )
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["error.reason"] == MALFORMED[letter.value]
        assert headers["error.detail"]
        assert headers["source.topic"] == topics.input
        index = values.index(letter.value)
        assert letter.key == keys[index]
        assert int(headers["source.partition"]) in ends and int(headers["source.offset"]) >= 0

    assert worker.metric("anomaly_records_consumed_total") == total
    assert worker.metric("anomaly_records_scored_total") == total - len(MALFORMED)
    assert worker.metric("anomaly_alerts_total") == len(anomalies)
    for reason in MALFORMED.values():
        assert worker.metric("anomaly_records_invalid_total", {"reason": reason}) == 1
    for partition in ends:
        assert worker.metric("anomaly_consumer_lag", {"partition": str(partition)}) == 0
    assert worker.metric("anomaly_end_to_end_latency_seconds_count") == len(anomalies)
    assert worker.metric("anomaly_event_time_outside_range_total", {"side": "past"}) is None
    assert worker.metric("anomaly_score_ratio_count") == total - len(MALFORMED)
    assert worker.metric("anomaly_model_info", {"version": "test-v1"}) == 1
    assert worker.metric("anomaly_last_processed_timestamp_seconds") > 1.6e9
    assert worker.http("/healthz")[0] == 200

    assert worker.terminate() == 0
    assert "SIGTERM received" in worker.log()

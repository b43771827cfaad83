"""Records a hostile producer or a bad day writes, through a real worker and broker: each is
scored or dead-lettered with a reason naming the field, and the worker never stops on one."""

import json
import time

import pytest

from tests.helpers import record
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import produce, read_topic, wait_committed

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]

HUGE = b"9" * 400


def test_poison_fields_schema_additions_and_odd_event_times(kafka_bootstrap, topics, start_worker):
    now = time.time()
    hot = [5, 5, 5, 5]
    refused = {
        # Once an OverflowError out of the decoder: exit 1 on every restart, the record never
        # committed (a crash loop).
        b'{"id": "poison", "ts": ' + HUGE + b', "features": [0, 0, 0, 0]}': (
            "invalid_field",
            "'ts'",
        ),
        b'{"features": [0, 0, 0, 0], "entity": ' + HUGE + b"}": ("invalid_field", "'entity'"),
        b'{"features": [0, 0, 0, 0], "id": "\\ud800"}': ("invalid_unicode", "$.id"),
        b'{"features": [0, ' + HUGE + b", 0, 0]}": ("non_finite", "[1]"),
    }
    scored = [
        record(hot, id="label-yes", label="yes"),  # once invalid_json
        record(hot, id="label-half", label=0.5),
        b'{"features": [0, 0, 0, 0], "label": ' + HUGE + b"}",
        b"\xef\xbb\xbf" + record(hot, id="bom"),  # once invalid_json
        b'{"id": "dup", "features": [0, 0, 0, 0], "features": [5, 5, 5, 5]}',  # last wins
        record({"cpu": 5, "mem": 5, "disk": 5, "net": 5, "gpu": 1}, id="added-feature"),
        record(hot, id="now", ts=now),
        record(hot, id="1970", ts=0),
        record(hot, id="millis", ts=now * 1000),
    ]
    values = [*refused, *scored]
    ends = produce(kafka_bootstrap, topics.input, values, partition=0)
    worker = start_worker()
    worker.wait_ready()
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends, 60)
    assert not worker.exited()
    alerts = read_topic(kafka_bootstrap, topics.alerts, expect=len(scored) - 1)
    assert sorted(json.loads(a.value)["id"] for a in alerts) == sorted(
        ["label-yes", "label-half", "bom", "dup", "added-feature", "now", "1970", "millis"]
    )
    letters = read_topic(kafka_bootstrap, topics.dlq, expect=len(refused))
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        reason, named = refused[letter.value]
        assert headers["error.reason"] == reason and named in headers["error.detail"], headers
    assert worker.metric("anomaly_records_scored_total") == len(scored)
    assert worker.metric("anomaly_features_ignored_total", {"feature": "gpu"}) == 1
    assert worker.metric("anomaly_event_time_outside_range_total", {"side": "past"}) == 1
    assert worker.metric("anomaly_event_time_outside_range_total", {"side": "future"}) == 1
    assert worker.metric("anomaly_end_to_end_latency_seconds_count") == len(alerts) - 2
    assert worker.metric("anomaly_end_to_end_latency_seconds_sum") < 600
    log = worker.log()
    assert "milliseconds sent as seconds?" in log and "does not have: ['gpu']" in log
    assert "Traceback" not in log
    assert worker.terminate() == 0

"""At-least-once under SIGTERM, SIGKILL and a second worker joining the group."""

import json

import pytest

from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import (
    committed,
    create_topics,
    produce,
    read_topic,
    wait_committed,
    wait_for,
)
from tests.integration.traffic import alerted_ids, backlog

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]


def test_sigterm_drains_commits_and_exits_zero(kafka_bootstrap, topics, start_worker):
    values, _ = backlog(60_000)
    ends = produce(kafka_bootstrap, topics.input, values)
    worker = start_worker(ANOMALY_BATCH_MAX_RECORDS="500", ANOMALY_SHUTDOWN_TIMEOUT_SECONDS="10")
    worker.wait_ready()
    wait_for(lambda: (worker.metric("anomaly_records_consumed_total") or 0) > 2_000, 30, 0.05)

    assert worker.terminate(timeout_seconds=15) == 0
    log = worker.log()
    assert "SIGTERM received" in log and "drained and committed" in log

    done = committed(kafka_bootstrap, topics.group, topics.input, ends)
    assert sum(done.values()) >= 2_000
    assert sum(done.values()) < sum(ends.values()), "the test needs a stop mid-stream"
    # Every anomaly below a committed offset has its alert on the output topic.
    records = read_topic(kafka_bootstrap, topics.input, sum(ends.values()))
    owed = {json.loads(r.value)["id"] for r in records if r.offset < done[r.partition]}
    owed &= {f"r{i}" for i in range(0, 60_000, 50)}
    assert owed
    alerted = set(alerted_ids(kafka_bootstrap, topics.alerts, len(owed)))
    assert owed <= alerted


def test_sigkill_mid_stream_then_restart_alerts_every_anomaly(
    kafka_bootstrap, topics, start_worker
):
    values, anomalies = backlog(40_000)
    ends = produce(kafka_bootstrap, topics.input, values)
    first = start_worker(ANOMALY_BATCH_MAX_RECORDS="500")
    first.wait_ready()
    wait_for(lambda: (first.metric("anomaly_records_consumed_total") or 0) > 5_000, 30, 0.05)
    first.kill()
    assert sum(committed(kafka_bootstrap, topics.group, topics.input, ends).values()) < sum(
        ends.values()
    )

    second = start_worker()
    second.wait_ready()
    wait_committed(kafka_bootstrap, topics.group, topics.input, ends, 90)
    alerted = alerted_ids(kafka_bootstrap, topics.alerts, len(anomalies))
    assert set(alerted) == anomalies  # none lost; repeats are allowed


def test_two_workers_share_the_partitions(kafka_bootstrap, topics, start_worker):
    shared = topics.input + "-4p"
    create_topics(kafka_bootstrap, [shared], partitions=4)
    a = start_worker(ANOMALY_INPUT_TOPIC=shared)
    a.wait_ready()
    b = start_worker(ANOMALY_INPUT_TOPIC=shared)
    b.wait_ready()

    def assigned(worker):
        lines = [ln for ln in worker.log().splitlines() if "partitions assigned" in ln]
        return lines[-1] if lines else ""

    # After the rebalance each worker owns two of the four partitions.
    wait_for(lambda: assigned(a).count(shared) == 2 and assigned(b).count(shared) == 2, 30)

    values, anomalies = backlog(4_000, every=40)
    # Distinct keys spread the records over all partitions (null keys may stick to one).
    ends = produce(
        kafka_bootstrap, shared, values, keys=[f"k{i}".encode() for i in range(len(values))]
    )
    assert len(ends) == 4
    wait_committed(kafka_bootstrap, topics.group, shared, ends)
    consumed = [w.metric("anomaly_records_consumed_total") for w in (a, b)]
    assert all(c > 0 for c in consumed)
    assert sum(consumed) == len(values)
    assert sorted(alerted_ids(kafka_bootstrap, topics.alerts, len(anomalies))) == sorted(anomalies)
    assert a.terminate() == 0 and b.terminate() == 0

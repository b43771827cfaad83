"""The broker restarted empty under a running worker: its topics, the group's offsets and the
producer's state are gone. The worker must carry on by itself. Before, kafka-python exited 1
on UnknownProducerIdError ("157 output(s) were not acknowledged") and confluent-kafka waited
120 s saying "broker unreachable" although the broker answered, then exited 1."""

import json
import time

import pytest

from demo.broker import LocalBroker, free_port
from tests.helpers import record
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import create_topics, produce, read_topic, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]


def test_a_broker_restarted_empty_is_carried_on_from_without_a_restart(
    topics, start_worker, tmp_path, kafka_client
):
    port = free_port()
    names = [topics.input, topics.alerts, topics.dlq]
    first = LocalBroker(port=port, log_path=tmp_path / "tansu-1.log").start()
    try:
        create_topics(first.bootstrap_servers, names, partitions=2)
        worker = start_worker(first.bootstrap_servers, ANOMALY_DELIVERY_TIMEOUT_SECONDS="30")
        worker.wait_ready(60)
        produce(first.bootstrap_servers, topics.input, [record([5, 5, 5, 5], id="before")])
        wait_for(lambda: worker.metric("anomaly_alerts_total") == 1, 30, message="an alert")
    finally:
        first.stop()
    time.sleep(2)
    second = LocalBroker(port=port, log_path=tmp_path / "tansu-2.log").start()  # empty
    try:
        create_topics(second.bootstrap_servers, names, partitions=2)
        anomalies = {f"after{i}" for i in range(0, 200, 20)}
        values = [
            record([5, 5, 5, 5] if f"after{i}" in anomalies else [0, 0, 0, 0], id=f"after{i}")
            for i in range(200)
        ]
        deadline = time.monotonic() + 90
        seen: set[str] = set()
        while not anomalies <= seen and time.monotonic() < deadline and not worker.exited():
            produce(second.bootstrap_servers, topics.input, values)  # again until alerted
            alerts = read_topic(second.bootstrap_servers, topics.alerts, 0, 5, settle_seconds=3)
            seen |= {json.loads(a.value)["id"] for a in alerts}
        log = worker.log()
        assert not worker.exited(), log[-3000:]
        assert anomalies <= seen, (sorted(anomalies - seen), log[-3000:])
        try:
            wait_for(lambda: worker.http("/readyz")[0] == 200, 60, message="ready again")
        except AssertionError as exc:  # say why it is not ready, and what the worker logged
            raise AssertionError(
                f"{exc}: {worker.http('/readyz')}\n{worker.log()[-3000:]}"
            ) from exc
        assert worker.terminate() == 0, worker.log()[-3000:]
    finally:
        second.stop()

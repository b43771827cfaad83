"""The input topic deleted and created again under a running worker (2 partitions, 2,000
records committed; recreated, 2,000 new records with 20 anomalies): the worker notices and
reads the new topic from its start. Before, kafka-python resumed at the old positions:
1,996 records skipped, 0 of 20 anomalies alerted, nothing logged."""

import contextlib
import json
import time

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from tests.helpers import record
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import create_topics, produce, read_topic, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]


def test_a_recreated_input_topic_is_read_again_from_its_start(
    kafka_bootstrap, topics, start_worker, kafka_client
):
    create_topics(kafka_bootstrap, [recreated := f"{topics.input}-recreated"], partitions=2)
    first = [record([0, 0, 0, 0], id=f"old{i}") for i in range(2_000)]
    produce(kafka_bootstrap, recreated, first)
    worker = start_worker(ANOMALY_INPUT_TOPIC=recreated)
    worker.wait_ready()
    wait_for(lambda: worker.metric("anomaly_records_consumed_total") == 2_000, 60)
    time.sleep(1.5)  # committed

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        admin.delete_topics([recreated])
        time.sleep(10)
        # The broker may have auto-created it for the worker's metadata request meanwhile.
        with contextlib.suppress(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(recreated, 2, 1)])
    finally:
        admin.close()
    anomalies = {f"new{i}" for i in range(0, 2_000, 100)}
    second = [
        record([5, 5, 5, 5] if f"new{i}" in anomalies else [0, 0, 0, 0], id=f"new{i}")
        for i in range(2_000)
    ]
    produce(kafka_bootstrap, recreated, second)
    if kafka_client == "confluent":
        # librdkafka crashes on this broker when a consumed topic is deleted (a bare
        # confluent-kafka consumer too): the supervisor restarts the worker, which must then
        # read the new topic from its start, not from the old topic's committed offsets.
        wait_for(worker.exited, 60, message="librdkafka to crash on the deleted topic")
        assert worker.process.returncode != 0
        worker = start_worker(ANOMALY_INPUT_TOPIC=recreated)
        worker.wait_ready()
    alerts = read_topic(kafka_bootstrap, topics.alerts, expect=len(anomalies), timeout_seconds=90)
    alerted = {json.loads(a.value)["id"] for a in alerts}
    assert alerted == anomalies, (worker.exited(), worker.log()[-4000:])
    if kafka_client == "kafka-python":
        wait_for(lambda: (worker.metric("anomaly_records_consumed_total") or 0) >= 4_000, 60)
        assert worker.metric("anomaly_input_topic_recreated_total") == 1
        assert "was deleted and created again" in worker.log()
    assert worker.terminate() == 0

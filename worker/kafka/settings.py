"""The Kafka slice of the settings: where the cluster is, how to reach it, which topics.

:class:`KafkaSettings` reads ``ANOMALY_*`` variables (or ``.env``) like every setting;
:class:`worker.settings.WorkerSettings` extends it, and ``anomaly-train`` reads it alone to
reach the same cluster and topics as the workers. Components are handed the frozen
:class:`~worker.kafka.options.Connection` it builds, never the settings object.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from worker.kafka.options import Connection

__all__ = [
    "DEFAULT_ALERT_TOPIC",
    "DEFAULT_BOOTSTRAP_SERVERS",
    "DEFAULT_DLQ_TOPIC",
    "DEFAULT_GROUP_ID",
    "DEFAULT_INPUT_TOPIC",
    "ENV_PREFIX",
    "KafkaSettings",
    "describe_validation_error",
]

ENV_PREFIX = "ANOMALY_"

DEFAULT_BOOTSTRAP_SERVERS = "localhost:9092"
DEFAULT_INPUT_TOPIC = "features"
DEFAULT_ALERT_TOPIC = "anomalies"
DEFAULT_DLQ_TOPIC = "features.dlq"
DEFAULT_GROUP_ID = "anomaly-worker"


class KafkaSettings(BaseSettings):
    """The cluster, the client and the topics, from ``ANOMALY_*`` (the environment wins over
    ``.env``)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        validate_default=True,
        use_attribute_docstrings=True,
    )

    # --- Kafka ---------------------------------------------------------------
    kafka_client: Literal["kafka-python", "confluent"] = "kafka-python"
    """`kafka-python` (pure Python) or `confluent` (librdkafka: the `[confluent]` extra, faster)."""
    bootstrap_servers: str = Field(DEFAULT_BOOTSTRAP_SERVERS, min_length=1)
    """Comma-separated ``host:port`` list of Kafka brokers."""
    input_topic: str = Field(DEFAULT_INPUT_TOPIC, min_length=1)
    """Topic of feature records to score."""
    alert_topic: str = Field(DEFAULT_ALERT_TOPIC, min_length=1)
    """Topic the alerts are written to."""
    dlq_topic: str = Field(DEFAULT_DLQ_TOPIC, min_length=1)
    """Dead-letter topic: every record that cannot be scored, unchanged, with error headers."""
    group_id: str = Field(DEFAULT_GROUP_ID, min_length=1)
    """Consumer group; workers sharing it share the input partitions."""
    connect_backoff_max_seconds: float = Field(10.0, gt=0.0, le=300.0)
    """Longest pause between attempts to reach an unreachable broker (at start and after a cut)."""

    # --- security --------------------------------------------------------------
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """Kafka security protocol."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """SASL mechanism, required with SASL_PLAINTEXT or SASL_SSL."""
    sasl_username: str | None = None
    """SASL user name."""
    sasl_password: SecretStr | None = None
    """SASL password (never logged)."""
    ssl_cafile: Path | None = None
    """CA bundle (PEM) to verify the brokers' certificates."""
    ssl_certfile: Path | None = None
    """Client certificate (PEM) for mutual TLS."""
    ssl_keyfile: Path | None = None
    """Client private key (PEM) for mutual TLS."""

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {value}")
        return value

    @model_validator(mode="after")
    def _kafka_consistent(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL"):
            missing = [
                name
                for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                if getattr(self, name) is None
            ]
            if missing:
                names = ", ".join(ENV_PREFIX + n.upper() for n in missing)
                raise ValueError(f"{self.security_protocol} needs {names}")
        if self.kafka_client == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_CLIENT=confluent needs confluent-kafka: "
                "pip install 'anomaly-worker[confluent]'"
            )
        if len({self.input_topic, self.alert_topic, self.dlq_topic}) < 3:
            raise ValueError(
                f"{ENV_PREFIX}INPUT_TOPIC, {ENV_PREFIX}ALERT_TOPIC and {ENV_PREFIX}DLQ_TOPIC "
                "must be three different topics"
            )
        return self

    def connection(self) -> Connection:
        """How every client of this process reaches the cluster."""
        password = self.sasl_password.get_secret_value() if self.sasl_password else None
        return Connection(
            client=self.kafka_client,
            servers=tuple(s.strip() for s in self.bootstrap_servers.split(",") if s.strip()),
            client_id=f"anomaly-worker-{self.group_id}",
            security_protocol=self.security_protocol,
            sasl_mechanism=self.sasl_mechanism,
            sasl_username=self.sasl_username,
            sasl_password=password,
            ssl_cafile=None if self.ssl_cafile is None else str(self.ssl_cafile),
            ssl_certfile=None if self.ssl_certfile is None else str(self.ssl_certfile),
            ssl_keyfile=None if self.ssl_keyfile is None else str(self.ssl_keyfile),
            reconnect_backoff_max_seconds=self.connect_backoff_max_seconds,
        )


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each offending environment variable, its problem and its value."""
    parts = []
    for item in error.errors():
        loc = [str(p) for p in item.get("loc", ()) if p != "__root__"]
        message = item.get("msg", "invalid").removeprefix("Value error, ")
        if loc:
            name = ENV_PREFIX + loc[0].upper()
            value = item.get("input")
            shown = "" if isinstance(value, dict) or "password" in loc[0] else f" (got {value!r})"
            parts.append(f"{name}: {message}{shown}")
        else:
            parts.append(message)
    return "invalid settings: " + "; ".join(parts)

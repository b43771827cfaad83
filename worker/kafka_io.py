"""Kafka clients built from settings, and connecting to a broker that may not be up yet."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaConnectionError, KafkaTimeoutError

from worker.settings import WorkerSettings

__all__ = ["client_config", "connect_with_backoff", "consumer_config", "producer_config"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

BOOTSTRAP_TIMEOUT_MS = 5000


def client_config(settings: WorkerSettings) -> dict[str, Any]:
    """Connection and security options shared by every client."""
    config: dict[str, Any] = {
        "bootstrap_servers": [
            s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()
        ],
        "client_id": f"anomaly-worker-{settings.group_id}",
        "security_protocol": settings.security_protocol,
        "bootstrap_timeout_ms": BOOTSTRAP_TIMEOUT_MS,
    }
    if settings.sasl_mechanism is not None:
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            config["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        value = getattr(settings, name)
        if value is not None:
            config[name] = str(value)
    return config


def consumer_config(settings: WorkerSettings) -> dict[str, Any]:
    return {
        **client_config(settings),
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "session_timeout_ms": int(settings.session_timeout_seconds * 1000),
        "heartbeat_interval_ms": int(settings.heartbeat_interval_seconds * 1000),
        "fetch_max_wait_ms": int(settings.fetch_max_wait_seconds * 1000),
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "max_poll_records": settings.batch_max_records,
    }


def producer_config(settings: WorkerSettings) -> dict[str, Any]:
    return {
        **client_config(settings),
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
    }


def connect_with_backoff(
    factory: Callable[[], T],
    stop: threading.Event,
    what: str,
    backoff_max_seconds: float,
    on_attempt: Callable[[], None] = lambda: None,
) -> T | None:
    """Call ``factory`` until it reaches a broker; ``None`` if ``stop`` is set meanwhile."""
    delay = 0.5
    attempt = 1
    while not stop.is_set():
        on_attempt()
        try:
            return factory()
        except (KafkaTimeoutError, KafkaConnectionError) as exc:
            logger.warning(
                "%s: broker unreachable (attempt %d: %s); retrying in %.1fs",
                what,
                attempt,
                exc,
                delay,
            )
        stop.wait(delay)
        delay = min(delay * 2, backoff_max_seconds)
        attempt += 1
    return None


def make_consumer(settings: WorkerSettings) -> KafkaConsumer:
    return KafkaConsumer(**consumer_config(settings))


def make_producer(settings: WorkerSettings) -> KafkaProducer:
    return KafkaProducer(**producer_config(settings))

"""Kafka clients built from settings, and connecting to a broker that may not be up yet."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from worker.exceptions import OutputTopicError, TlsError
from worker.pipeline import Pipeline, kafka_offsets
from worker.settings import WorkerSettings

__all__ = [
    "RebalanceListener",
    "check_tls",
    "client_config",
    "connect_with_backoff",
    "consumer_config",
    "group_link_age",
    "producer_config",
    "require_topics",
]

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
        # After an outage, reconnect within the worker's own backoff bound (the client's
        # default waits up to 30 s).
        "reconnect_backoff_max_ms": int(settings.connect_backoff_max_seconds * 1000),
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


#: How long a produce call may wait for room in the buffer or for topic metadata.
MAX_BLOCK_MS = 10_000


def consumer_config(settings: WorkerSettings) -> dict[str, Any]:
    return {
        **client_config(settings),
        "group_id": settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": settings.auto_offset_reset,
        "isolation_level": settings.isolation_level,
        "check_crcs": True,
        "session_timeout_ms": int(settings.session_timeout_seconds * 1000),
        "heartbeat_interval_ms": int(settings.heartbeat_interval_seconds * 1000),
        # Also the rebalance timeout: how long a join waits for members that do not rejoin
        # (one that died mid-join). The loop polls at least every batch, far more often.
        "max_poll_interval_ms": int(max(30.0, 3 * settings.session_timeout_seconds) * 1000),
        "fetch_max_wait_ms": int(settings.fetch_max_wait_seconds * 1000),
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
        "max_poll_records": settings.batch_max_records,
    }


def producer_config(settings: WorkerSettings) -> dict[str, Any]:
    """Idempotent, acks=all: the producer's own retries never duplicate an output."""
    compression = settings.output_compression
    return {
        **client_config(settings),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "compression_type": None if compression == "none" else compression,
        "max_request_size": settings.max_request_bytes,
        "delivery_timeout_ms": int(settings.delivery_timeout_seconds * 1000),
        # kafka-python wants delivery_timeout_ms > linger_ms + request_timeout_ms.
        "request_timeout_ms": int(min(30.0, settings.delivery_timeout_seconds / 2) * 1000),
        "max_block_ms": MAX_BLOCK_MS,
        # The worker never creates topics: a missing output topic is an error at start.
        "allow_auto_create_topics": False,
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


#: How long the TLS pre-flight waits for a broker's handshake (and a refusal of our certificate).
TLS_CHECK_SECONDS = 5.0


def check_tls(settings: WorkerSettings) -> None:
    """Fail at start, in one line, when TLS cannot work with these settings.

    kafka-python reports a certificate that does not verify (a wrong CA, a name
    mismatch) or a client certificate the broker refuses only as "Unable to
    bootstrap", retried forever. This handshake with each reachable bootstrap
    server, using the same files, says which. Unreachable servers are left to
    the connection backoff.
    """
    if not settings.security_protocol.endswith("SSL"):
        return
    context = ssl.create_default_context(
        cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None
    )
    if settings.ssl_certfile is not None:
        keyfile = str(settings.ssl_keyfile) if settings.ssl_keyfile else None
        try:
            context.load_cert_chain(str(settings.ssl_certfile), keyfile)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(
                f"TLS: cannot load ANOMALY_SSL_CERTFILE/ANOMALY_SSL_KEYFILE: {exc}"
            ) from exc
    for server in [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()]:
        host, _, port = server.rpartition(":")
        host = host.strip("[]")
        try:
            raw = socket.create_connection((host, int(port)), timeout=TLS_CHECK_SECONDS)
        except (OSError, ValueError):
            continue  # not reachable (yet): the connection backoff deals with it
        try:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                tls.settimeout(0.5)
                # A TLS 1.3 server refuses a client certificate after the handshake.
                with contextlib.suppress(TimeoutError, ssl.SSLWantReadError):
                    tls.recv(1)
        except ssl.SSLCertVerificationError as exc:
            raise TlsError(
                f"TLS: the certificate of {server} does not verify against "
                f"ANOMALY_SSL_CAFILE={settings.ssl_cafile or '(system CAs)'}: {exc.verify_message}"
            ) from exc
        except ssl.SSLError as exc:
            raise TlsError(
                f"TLS: {server} refused the connection ({exc.reason or exc}); "
                "check ANOMALY_SSL_CERTFILE/ANOMALY_SSL_KEYFILE (mutual TLS) and the protocol"
            ) from exc
        except OSError:
            continue
        finally:
            raw.close()


def require_topics(producer: KafkaProducer, topics: list[str]) -> None:
    """Fail with one line when an output topic is missing (and not auto-created) or not writable."""
    for topic in topics:
        try:
            partitions = producer.partitions_for(topic)
        except KafkaError as exc:
            raise OutputTopicError(
                f"output topic {topic!r} is missing or not writable "
                f"({type(exc).__name__}: {exc}); create it or grant Write on it"
            ) from exc
        if not partitions:
            raise OutputTopicError(f"output topic {topic!r} has no partitions; create it")


def make_consumer(settings: WorkerSettings) -> KafkaConsumer:
    return KafkaConsumer(**consumer_config(settings))


def make_probe_consumer(settings: WorkerSettings) -> KafkaConsumer:
    """A consumer outside the group (no group id), to read one partition at chosen offsets."""
    config = consumer_config(settings)
    for name in ("group_id", "session_timeout_ms", "heartbeat_interval_ms", "auto_offset_reset"):
        config.pop(name)
    return KafkaConsumer(**config)


def make_producer(settings: WorkerSettings) -> KafkaProducer:
    return KafkaProducer(**producer_config(settings))


class RebalanceListener(AsyncConsumerRebalanceListener):
    """Commit what was processed before partitions move, without blocking the client's IO thread.

    kafka-python 3 runs rebalance listeners on its IO thread (during ``poll``
    and ``close``), where a blocking ``consumer.commit`` raises "Cannot block on
    net.run() from the IO thread itself". The async listener awaits the
    coordinator's commit coroutine instead, so heartbeats keep flowing. (That
    coroutine is the one ``KafkaConsumer.commit`` runs; kafka-python has no
    public awaitable commit.)
    """

    def __init__(self, pipeline: Pipeline, consumer: KafkaConsumer, timeout_ms: int) -> None:
        self.pipeline, self.consumer, self.timeout_ms = pipeline, consumer, timeout_ms

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        offsets = self.pipeline.prepare_revoke()
        if offsets:
            coordinator = self.consumer._coordinator
            try:
                await coordinator._commit_offsets_sync_async(
                    kafka_offsets(offsets), timeout_ms=self.timeout_ms
                )
            except Exception as exc:  # the new owner re-reads from the last commit
                logger.warning("commit before the rebalance failed (outputs may repeat): %r", exc)
            else:
                self.pipeline.committed(offsets)
        self.pipeline.revoked({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.pipeline.on_assigned({(tp.topic, tp.partition) for tp in assigned})

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self.pipeline.lost({(tp.topic, tp.partition) for tp in lost})


def group_link_age(consumer: KafkaConsumer) -> float | None:
    """Seconds since the group coordinator last answered a heartbeat (None if unknown).

    Reads kafka-python's heartbeat bookkeeping: the client exposes no public
    "connected" signal, and a poll during a network cut may simply come back empty.
    """
    heartbeat = getattr(getattr(consumer, "_coordinator", None), "heartbeat", None)
    if heartbeat is None:
        return None
    last = max(heartbeat.last_receive, heartbeat.last_reset)
    return time.monotonic() - last

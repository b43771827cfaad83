"""Choosing a client driver by name and reaching the broker through it.

Each driver (:mod:`worker.kafka.kafka_python` and ``kafka_python_producer``,
:mod:`worker.kafka.confluent` and ``confluent_producer``) is imported only when chosen, so
the confluent extra stays optional.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from worker.kafka.options import Connection, ConsumerOptions, ProducerOptions
from worker.kafka.ports import BrokerUnreachable, Consumer, Producer

__all__ = ["Driver", "connect_with_backoff", "driver"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A driver's consumer and producer classes.
Driver = tuple[
    Callable[[Connection, ConsumerOptions], Consumer],
    Callable[[Connection, ProducerOptions], Producer],
]


def driver(client: str) -> Driver:
    """The consumer and producer classes of ``ANOMALY_KAFKA_CLIENT``."""
    if client == "confluent":
        from worker.kafka.confluent import ConfluentConsumer
        from worker.kafka.confluent_producer import ConfluentProducer

        return ConfluentConsumer, ConfluentProducer
    from worker.kafka.kafka_python import KafkaPythonConsumer
    from worker.kafka.kafka_python_producer import KafkaPythonProducer

    return KafkaPythonConsumer, KafkaPythonProducer


def connect_with_backoff(
    factory: Callable[[], T],
    stop: threading.Event,
    what: str,
    backoff_max_seconds: float,
    on_attempt: Callable[[], None] = lambda: None,
) -> T | None:
    """Call ``factory`` until it reaches a broker; ``None`` if ``stop`` is set meanwhile.

    ``factory`` raises :class:`BrokerUnreachable` while no broker answers.
    """
    delay = 0.5
    attempt = 1
    while not stop.is_set():
        on_attempt()
        try:
            return factory()
        except BrokerUnreachable as exc:
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

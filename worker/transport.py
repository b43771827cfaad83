"""The pipeline's view of Kafka: what every client adapter provides, in the worker's own terms.

Two adapters implement it, chosen by ``ANOMALY_KAFKA_CLIENT``:

- :mod:`worker.transport_kafka_python` (``kafka-python``, the default, pure Python);
- :mod:`worker.transport_confluent` (``confluent``, librdkafka through confluent-kafka,
  the fast option: ``pip install 'anomaly-worker[confluent]'``).

The pipeline imports neither client. It sees records as opaque client objects
(:attr:`Chunk.messages`) plus their values, decoded in bulk; only a record that
becomes an alert or a dead letter is turned into a :class:`SourceMessage`
(:meth:`Consumer.source`). Faults arrive as the exceptions below, whatever the
client called them, so the commit protocol in :mod:`worker.pipeline` is one
piece of code for both clients.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from worker.exceptions import WorkerError
from worker.messages import SourceMessage
from worker.offsets import Partition

__all__ = [
    "MAX_PARTITION_FETCH_BYTES",
    "BrokerUnreachable",
    "Chunk",
    "CommitRejected",
    "Consumer",
    "OnDelivery",
    "Producer",
    "RebalanceHooks",
    "TransactionAbortable",
    "TransientError",
    "TransportError",
    "UndecodableError",
    "connect_with_backoff",
    "fenced_message",
    "max_poll_interval_seconds",
    "request_timeout_seconds",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: Largest fetch per partition (Kafka's default); also bounds what a worker buffers.
MAX_PARTITION_FETCH_BYTES = 1024 * 1024


def max_poll_interval_seconds(session_timeout_seconds: float) -> float:
    """Also the rebalance timeout: how long a join waits for members that do not rejoin
    (one that died mid-join). The loop polls at least every batch, far more often."""
    return max(30.0, 3 * session_timeout_seconds)


def request_timeout_seconds(delivery_timeout_seconds: float) -> float:
    """A produce request's timeout; several fit in the delivery timeout (kafka-python needs
    delivery > linger + request)."""
    return min(30.0, delivery_timeout_seconds / 2)


class TransportError(WorkerError):
    """A Kafka fault the worker cannot ride out (stop, exit 1); the client's error is the cause."""


class TransientError(TransportError):
    """A broker or network fault the client recovers from by itself, given time."""


class CommitRejected(TransientError):
    """The group moved on without this worker (a rebalance); the new owner re-reads."""


class BrokerUnreachable(TransientError):
    """No broker answered while creating a client (at start; retried with backoff)."""


class TransactionAbortable(TransportError):
    """The open transaction cannot commit (e.g. the group moved on): abort it, then go on."""


def fenced_message(transactional_id: str, detail: str) -> str:
    """Why a transactional producer was fenced, and what to do about it."""
    return (
        f"fenced: a newer producer with transactional id {transactional_id!r} started ({detail}); "
        "either a restarted worker took over from this one, or two workers share the id "
        "(give each its own ANOMALY_TRANSACTIONAL_ID)"
    )


class UndecodableError(TransportError):
    """The client cannot decode a record batch (corrupt, checksum mismatch, unknown codec).

    ``partition`` and ``offset`` are where it is stuck, when the client says.
    """

    def __init__(
        self, reason: str, partition: Partition | None = None, offset: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason, self.partition, self.offset = reason, partition, offset


class Chunk(NamedTuple):
    """What one poll returned, in the order the client gave it."""

    messages: Sequence[Any]  # the client's record objects; Consumer.source() reads one
    values: list[bytes | None]  # messages[i]'s value
    last: dict[Partition, int]  # the last offset per partition in this chunk


class RebalanceHooks(Protocol):
    """What the pipeline does when partitions move (the adapters call these)."""

    def prepare_revoke(self) -> dict[Partition, int]:
        """Finish the batch in hand and flush; the offsets to commit before partitions move."""
        ...

    def committed(self, offsets: dict[Partition, int]) -> None: ...
    def revoked(self, revoked: set[Partition]) -> None: ...
    def lost(self, lost: set[Partition]) -> None: ...
    def on_assigned(self, assigned: set[Partition]) -> None: ...


#: Called once per sent record: ``None`` when the broker acknowledged it, else why not.
OnDelivery = Callable[[BaseException | None], None]


class Consumer(Protocol):
    def subscribe(self, topic: str, hooks: RebalanceHooks) -> None: ...

    def poll(self, timeout: float, max_records: int) -> Chunk | None:
        """Up to ``max_records`` records, waiting at most ``timeout`` s for the first.

        Raises TransientError, UndecodableError or TransportError.
        """
        ...

    def source(self, message: Any) -> SourceMessage:
        """A record of a chunk as the alert and dead-letter builders read it."""
        ...

    def commit(self, offsets: dict[Partition, int], timeout: float) -> None:
        """Commit next-offsets synchronously; CommitRejected / TransientError when not done."""
        ...

    def assignment(self) -> set[Partition]: ...
    def position(self, partition: Partition) -> int: ...
    def seek(self, partition: Partition, offset: int) -> None: ...

    def highwater(self, partition: Partition) -> int | None:
        """The partition's high-water mark as of the last fetch (None before one)."""
        ...

    def link_age(self) -> float | None:
        """Seconds since the group coordinator last answered (None: the client cannot tell)."""
        ...

    def group_metadata(self) -> object:
        """This member's group state (generation, member id) for a transactional offset commit:
        the broker refuses the commit of a member the group has moved on from."""
        ...

    def probe_fails(self, partition: Partition, offset: int, timeout: float) -> bool:
        """Whether reading ``partition`` from ``offset`` fails to decode.

        Reads with a separate consumer outside the group, so the group is not disturbed.
        """
        ...

    def close(self) -> None: ...


class Producer(Protocol):
    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        on_delivery: OnDelivery,
    ) -> None:
        """Hand one record to the client; ``on_delivery`` says later whether it landed."""
        ...

    def flush(self, timeout: float) -> None:
        """Wait for every record sent so far; TransientError when some are still in flight."""
        ...

    def check_topic(self, topic: str) -> None:
        """Raise OutputTopicError unless ``topic`` exists and is writable."""
        ...

    # Transactions (ANOMALY_PROCESSING_GUARANTEE=exactly_once; the producer was created
    # transactional and has fenced any earlier producer with its transactional id).
    def begin_transaction(self) -> None: ...

    def commit_transaction(
        self, offsets: dict[Partition, int], group: object, timeout: float
    ) -> None:
        """Add the consumed ``offsets`` to the open transaction and commit it: every record
        sent since :meth:`begin_transaction` and the offsets become readable together.

        TransientError: not done within ``timeout``; call again with the same offsets.
        TransactionAbortable: abort it. TransportError: fatal (e.g. fenced by a newer
        producer with the same transactional id).
        """
        ...

    def abort_transaction(self, timeout: float) -> None:
        """Abort the open transaction: read_committed readers never see what it sent."""
        ...

    def close(self, timeout: float) -> None: ...


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

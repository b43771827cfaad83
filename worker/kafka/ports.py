"""The worker's view of Kafka: what every client driver provides, in the worker's own terms.

Two drivers implement it, chosen by ``ANOMALY_KAFKA_CLIENT`` (:mod:`worker.kafka.clients`):

- :mod:`worker.kafka.kafka_python` (``kafka-python``, the default, pure Python);
- :mod:`worker.kafka.confluent` (``confluent``, librdkafka through confluent-kafka,
  the fast option: ``pip install 'anomaly-worker[confluent]'``).

Nothing outside the drivers imports a client. Records travel as opaque client objects
(:attr:`Chunk.messages`) plus their values, decoded in bulk; only a record that becomes
an alert or a dead letter is turned into a :class:`~worker.contract.messages.SourceMessage`
(:meth:`Consumer.source_of`). Faults arrive as the exceptions below, whatever the client
called them, and partitions that move take one path, :func:`commit_on_revoke`, so the
commit protocol (:mod:`worker.delivery.checkpoint`) is one piece of code for both clients.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, NamedTuple, Protocol, TypeVar

from worker.contract.messages import Partition, SourceMessage
from worker.exceptions import WorkerError

__all__ = [
    "BrokerUnreachable",
    "Chunk",
    "CommitRejected",
    "Consumer",
    "OnDelivery",
    "OutputTopicError",
    "Producer",
    "ProducerStateLost",
    "RebalanceHooks",
    "TlsError",
    "TransactionAbortable",
    "TransientError",
    "TransportError",
    "UndecodableError",
    "commit_on_revoke",
    "fenced_message",
    "run_inline",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class TransportError(WorkerError):
    """Root of the kafka package's errors: a Kafka fault the worker cannot ride out (stop,
    exit 1); the client's error is the cause."""


class TransientError(TransportError):
    """A broker or network fault the client recovers from by itself, given time."""


class CommitRejected(TransientError):
    """The group moved on without this worker (a rebalance); the new owner re-reads."""


class BrokerUnreachable(TransientError):
    """No broker answered while creating a client (at start; retried with backoff)."""


class ProducerStateLost(TransportError):
    """The broker no longer knows this idempotent producer (it restarted without its data, or
    the producer id expired): outputs in flight are lost, and only a new producer can send."""


class TransactionAbortable(TransportError):
    """The open transaction cannot commit (e.g. the group moved on): abort it, then go on."""


class OutputTopicError(TransportError):
    """The alert or dead-letter topic is missing or not writable (at start: exit 2)."""


class TlsError(TransportError):
    """TLS cannot work with the configured files (the broker's certificate, ours; exit 2)."""


class UndecodableError(TransportError):
    """The client cannot decode a record batch (corrupt, checksum mismatch, unknown codec).

    ``partition`` and ``offset`` are where it is stuck, when the client says.
    """

    def __init__(
        self, reason: str, partition: Partition | None = None, offset: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason, self.partition, self.offset = reason, partition, offset


def fenced_message(transactional_id: str, detail: str) -> str:
    """Why a transactional producer was fenced, and what to do about it."""
    return (
        f"fenced: a newer producer with transactional id {transactional_id!r} started ({detail}); "
        "either a restarted worker took over from this one, or two workers share the id "
        "(give each its own ANOMALY_TRANSACTIONAL_ID)"
    )


class Chunk(NamedTuple):
    """What one poll returned, in the order the client gave it."""

    messages: Sequence[Any]  # the client's record objects; Consumer.source_of() reads one
    values: list[bytes | None]  # messages[i]'s value
    last: dict[Partition, int]  # the last offset per partition in this chunk


class RebalanceHooks(Protocol):
    """What the worker does when partitions move (the drivers call these)."""

    def prepare_revoke(self) -> dict[Partition, int]:
        """Finish the batch in hand and flush; the offsets to commit before partitions move
        (none when there is nothing to commit, or it was committed another way)."""
        ...

    def committed(self, offsets: dict[Partition, int]) -> None: ...
    def revoked(self, revoked: set[Partition]) -> None: ...
    def lost(self, lost: set[Partition]) -> None: ...
    def on_assigned(self, assigned: set[Partition]) -> None: ...


#: Commits offsets before partitions move; raises when it could not.
CommitBeforeRevoke = Callable[[dict[Partition, int]], Awaitable[None]]


async def commit_on_revoke(
    hooks: RebalanceHooks, revoked: set[Partition], commit: CommitBeforeRevoke
) -> None:
    """The one path partitions take when they are revoked, whichever client (and test double).

    A coroutine because kafka-python runs rebalance listeners on its IO thread, where a
    blocking commit is refused: its driver awaits the client's commit coroutine. librdkafka
    runs them inside ``poll`` on the main thread, where a commit may block: its driver runs
    this with :func:`run_inline`.
    """
    offsets = hooks.prepare_revoke()
    if offsets:
        try:
            await commit(offsets)
        except Exception as exc:  # the new owner re-reads from the last commit
            logger.warning("commit before the rebalance failed (outputs may repeat): %s", exc)
        else:
            hooks.committed(offsets)
    hooks.revoked(revoked)


def run_inline(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (every await in it completes at once) to its end."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine suspended: it needs an event loop")


#: Called once per sent record: ``None`` when the broker acknowledged it, else why not.
OnDelivery = Callable[[BaseException | None], None]


class Consumer(Protocol):
    def subscribe(self, topic: str, hooks: RebalanceHooks) -> None: ...

    def poll(self, timeout: float, max_records: int) -> Chunk | None:
        """Up to ``max_records`` records, waiting at most ``timeout`` s for the first.

        Raises TransientError, UndecodableError or TransportError.
        """
        ...

    def source_of(self, message: Any) -> SourceMessage:
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

    def topic_id(self, topic: str) -> str | None:
        """The topic's id (KIP-516) in the client's latest metadata: a topic deleted and
        created again gets a new one. None when the client does not tell."""
        ...

    def reset_positions(self, partitions: set[Partition]) -> None:
        """Read ``partitions`` again from where ``ANOMALY_AUTO_OFFSET_RESET`` says (their
        beginning or their end), as for a group with no committed offset. Partitions the
        client does not hold (any more) are left alone: whoever gets them next reads them from
        the group's offsets."""
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

    def renew(self) -> None:
        """Replace the client with a new one (a new producer id), dropping what is in flight:
        after :class:`ProducerStateLost`."""
        ...

    def close(self, timeout: float) -> None: ...

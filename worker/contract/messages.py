"""What the worker reads from Kafka, as the pure core sees it."""

from __future__ import annotations

from typing import NamedTuple, Protocol

__all__ = ["Message", "Partition", "SourceMessage"]

#: A partition of a topic: ``(topic, partition number)``.
Partition = tuple[str, int]


class SourceMessage(Protocol):
    """The fields of a consumed record the core uses (kafka-python's ConsumerRecord has them)."""

    @property
    def topic(self) -> str: ...
    @property
    def partition(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def timestamp(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...


class Message(NamedTuple):
    """A plain :class:`SourceMessage`, for tests and tools."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None

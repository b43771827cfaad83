"""The micro-batch: it closes at ``max_records``, or ``max_wait_seconds`` after its first record."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from worker.contract.messages import Partition

__all__ = ["BatchWindow", "MicroBatch"]


class BatchWindow:
    """Tracks one micro-batch being filled, against an injectable clock.

    >>> now = [0.0]
    >>> w = BatchWindow(max_records=3, max_wait_seconds=1.0, clock=lambda: now[0])
    >>> w.add(2); w.ready()
    False
    >>> now[0] = 1.5; w.ready()
    True
    """

    def __init__(
        self,
        max_records: int,
        max_wait_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_records < 1 or max_wait_seconds <= 0:
            raise ValueError("max_records must be >= 1 and max_wait_seconds > 0")
        self.max_records = max_records
        self.max_wait_seconds = max_wait_seconds
        self._clock = clock
        self.count = 0
        self.opened_at: float | None = None

    def add(self, n: int) -> None:
        """Count ``n`` more records; the wait starts with the first one."""
        if n and self.opened_at is None:
            self.opened_at = self._clock()
        self.count += n

    def reset(self) -> None:
        self.count = 0
        self.opened_at = None

    @property
    def room(self) -> int:
        """How many more records fit."""
        return max(self.max_records - self.count, 0)

    def remaining_seconds(self) -> float:
        """How long to wait for more records (the full wait while the batch is empty)."""
        if self.opened_at is None:
            return self.max_wait_seconds
        return max(self.opened_at + self.max_wait_seconds - self._clock(), 0.0)

    def ready(self) -> bool:
        """True when the batch is full, or non-empty and its wait is over."""
        if self.count >= self.max_records:
            return True
        return self.count > 0 and self.remaining_seconds() <= 0.0


class MicroBatch:
    """The batch being filled: the client's records, their values, the last offset per partition.

    >>> batch = MicroBatch(BatchWindow(max_records=10, max_wait_seconds=1.0))
    >>> batch.add(["r0", "r1"], [b"a", b"b"], {("in", 0): 41}); len(batch), batch.window.room
    (2, 8)
    >>> batch.take()
    (['r0', 'r1'], [b'a', b'b'], {('in', 0): 41})
    >>> bool(batch), batch.window.count
    (False, 0)
    """

    def __init__(self, window: BatchWindow) -> None:
        self.window = window
        self._messages: list[Any] = []
        self._values: list[bytes | None] = []
        self._last: dict[Partition, int] = {}

    def add(
        self, messages: Sequence[Any], values: Sequence[bytes | None], last: dict[Partition, int]
    ) -> None:
        """Add polled records (``last``: the last offset of each partition among them)."""
        self._messages.extend(messages)
        self._values.extend(values)
        self._last.update(last)
        self.window.add(len(values))

    def take(self) -> tuple[list[Any], list[bytes | None], dict[Partition, int]]:
        """The batch, leaving an empty one."""
        taken = self._messages, self._values, self._last
        self._messages, self._values, self._last = [], [], {}
        self.window.reset()
        return taken

    def drop(self, partitions: set[Partition], partition_of: Callable[[Any], Partition]) -> int:
        """Leave out the records of ``partitions`` (``partition_of`` reads a record's); how many.

        >>> batch = MicroBatch(BatchWindow(max_records=10, max_wait_seconds=1.0))
        >>> batch.add([("in", 0), ("in", 1), ("in", 0)], [b"a", b"b", b"c"], {("in", 0): 7})
        >>> batch.drop({("in", 0)}, lambda record: record), batch.take()
        (2, ([('in', 1)], [b'b'], {}))
        """
        if not self._values or not partitions:
            return 0
        messages, values, last = self.take()
        kept = [i for i, m in enumerate(messages) if partition_of(m) not in partitions]
        self.add(
            [messages[i] for i in kept],
            [values[i] for i in kept],
            {p: o for p, o in last.items() if p not in partitions},
        )
        return len(messages) - len(kept)

    def __len__(self) -> int:
        return len(self._values)

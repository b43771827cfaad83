"""Offsets the worker may commit: only records whose outputs the broker has acknowledged.

The pipeline marks offsets as records are processed; :meth:`OffsetTracker.to_commit`
is called only after the producer's flush confirmed every alert and dead letter
sent so far, so a commit never covers an output that could still be lost.
"""

from __future__ import annotations

from collections.abc import Iterable

from worker.contract.messages import Partition

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Next offset to commit per partition, and what was committed last.

    >>> t = OffsetTracker()
    >>> t.mark(("in", 0), 41); t.to_commit()
    {('in', 0): 42}
    >>> t.committed({("in", 0): 42}); t.to_commit()
    {}
    """

    def __init__(self) -> None:
        self._processed: dict[Partition, int] = {}
        self._committed: dict[Partition, int] = {}
        self._start: dict[Partition, int] = {}  # the first offset processed since assignment

    def mark(self, partition: Partition, last_offset: int) -> None:
        """Record that every record of ``partition`` up to ``last_offset`` is processed."""
        if last_offset + 1 > self._processed.get(partition, -1):
            self._processed[partition] = last_offset + 1

    def position(self, partition: Partition) -> int | None:
        """The next offset after the last processed record, if any."""
        return self._processed.get(partition)

    def to_commit(self, partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """Processed offsets not yet committed (optionally only for ``partitions``)."""
        chosen = (
            self._processed
            if partitions is None
            else {p: self._processed[p] for p in partitions if p in self._processed}
        )
        return {p: o for p, o in chosen.items() if self._committed.get(p) != o}

    def committed(self, offsets: dict[Partition, int]) -> None:
        self._committed.update(offsets)

    def start(self, partition: Partition, offset: int) -> None:
        """Record the first offset processed of a newly assigned partition."""
        self._start.setdefault(partition, offset)

    def started(self, partition: Partition) -> bool:
        return partition in self._start

    def rewind(self) -> dict[Partition, int]:
        """Forget what was processed since the last commit (an aborted transaction); where
        to read each partition again from: its committed offset, else its first processed.

        >>> t = OffsetTracker()
        >>> t.start(("in", 0), 5); t.mark(("in", 0), 9); t.rewind()
        {('in', 0): 5}
        >>> t.mark(("in", 0), 9); t.committed({("in", 0): 10}); t.mark(("in", 0), 20); t.rewind()
        {('in', 0): 10}
        >>> t.to_commit()
        {}
        """
        points = {p: self._committed.get(p, first) for p, first in self._start.items()}
        self._processed = {p: o for p, o in self._committed.items() if p in self._processed}
        return points

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop partitions this worker no longer owns."""
        for partition in partitions:
            self._processed.pop(partition, None)
            self._committed.pop(partition, None)
            self._start.pop(partition, None)

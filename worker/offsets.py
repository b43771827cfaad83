"""Offsets the worker may commit: only records whose outputs the broker has acknowledged.

The pipeline marks offsets as records are processed; :meth:`OffsetTracker.to_commit`
is called only after the producer's flush confirmed every alert and dead letter
sent so far, so a commit never covers an output that could still be lost.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["OffsetTracker", "Partition"]

Partition = tuple[str, int]


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

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Drop partitions this worker no longer owns."""
        for partition in partitions:
            self._processed.pop(partition, None)
            self._committed.pop(partition, None)

"""A record batch the Kafka client cannot decode: stop at it, or step past it.

``ANOMALY_ON_UNDECODABLE_BATCH=fail`` (the default) stops the worker naming the batch,
with everything before it committed, so a restart (after the batch is dealt with) resumes
exactly there. ``skip`` finds the first offset the client reads again (probing with a
consumer outside the group) and dead-letters the offsets in between, headers only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from worker.contract.messages import Partition
from worker.core.deadletters import build_skipped_letter
from worker.delivery.checkpoint import Committer
from worker.delivery.outputs import Outputs
from worker.kafka.ports import Consumer, UndecodableError
from worker.observe.metrics import WorkerMetrics

__all__ = ["MAX_SKIP_OFFSETS", "PROBE_SECONDS", "SkipRange", "StopAt", "UndecodableBatches"]

logger = logging.getLogger(__name__)

#: Longest skip when stepping past an undecodable batch, in offsets.
MAX_SKIP_OFFSETS = 100_000
#: How long a probe waits for a fetch before taking an offset as readable.
PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class StopAt:
    """Stop the worker at this batch (``partition`` and ``offset`` are -1 where unknown)."""

    topic: str
    partition: int
    offset: int
    reason: str


@dataclass(frozen=True)
class SkipRange:
    """Skip ``first`` .. ``resume - 1`` of the partition and read on from ``resume``."""

    topic: str
    partition: int
    first: int
    resume: int
    reason: str


class UndecodableBatches:
    """Decides what to do with an :class:`~worker.kafka.ports.UndecodableError`, and steps
    past a skipped range."""

    def __init__(
        self,
        consumer: Consumer,
        outputs: Outputs,
        committer: Committer,
        metrics: WorkerMetrics,
        input_topic: str,
        on_undecodable_batch: str,
    ) -> None:
        self.consumer, self.outputs, self.committer = consumer, outputs, committer
        self.metrics, self.input_topic = metrics, input_topic
        self.skip = on_undecodable_batch == "skip"

    def decide(self, exc: UndecodableError) -> StopAt | SkipRange:
        located = self._locate(exc)
        if not self.skip or located is None:
            topic, partition, offset = located if located else (self.input_topic, -1, -1)
            return StopAt(topic, partition, offset, exc.reason)
        topic, partition, offset = located
        resume = self._first_decodable((topic, partition), offset)
        return SkipRange(topic, partition, offset, resume, exc.reason)

    def step_past(self, skipped: SkipRange) -> None:
        """Read on after the range; its dead letter is its outcome, so it counts as processed."""
        topic, partition, first, resume = (
            skipped.topic,
            skipped.partition,
            skipped.first,
            skipped.resume,
        )
        self.consumer.seek((topic, partition), resume)
        letter = build_skipped_letter(
            topic, partition, first, resume - 1, "undecodable", skipped.reason
        )
        self.outputs.letter(letter, f"{topic}[{partition}]@{first}")
        self.metrics.records_skipped.labels(reason="undecodable").inc(resume - first)
        self.committer.processed({(topic, partition): resume - 1})
        logger.error(
            "skipped %s[%d]@%d..%d: the Kafka client cannot decode the batch (%s)",
            topic,
            partition,
            first,
            resume - 1,
            skipped.reason,
        )

    def _locate(self, exc: UndecodableError) -> tuple[str, int, int] | None:
        """Which partition is stuck, at which offset: from the error, else by probing each."""
        if exc.partition is not None and exc.offset is not None:
            return exc.partition[0], exc.partition[1], exc.offset
        for partition in sorted(self.consumer.assignment()):
            position = self.consumer.position(partition)
            if self.consumer.probe_fails(partition, position, PROBE_SECONDS):
                return partition[0], partition[1], position
        return None

    def _first_decodable(self, partition: Partition, offset: int) -> int:
        """The first offset after ``offset`` from which ``partition`` reads again (bounded)."""
        high = self.consumer.highwater(partition)
        candidate = offset + 1
        while candidate - offset < MAX_SKIP_OFFSETS:
            if high is not None and candidate >= high:
                break
            if not self.consumer.probe_fails(partition, candidate, PROBE_SECONDS):
                break
            candidate += 1
        return candidate

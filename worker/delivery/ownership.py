"""The partitions this worker owns: what arrives, what leaves, and what their lag is.

Records of a partition that leaves (revoked, lost, or its topic recreated) are dropped from
the batch in hand and their offsets forgotten: their next owner, or the new topic, is read
from where the group or ``ANOMALY_AUTO_OFFSET_RESET`` says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from worker.contract.messages import Partition
from worker.core.batching import MicroBatch
from worker.delivery.checkpoint import Committer
from worker.kafka.link import BrokerLink
from worker.kafka.ports import Consumer
from worker.observe.metrics import WorkerMetrics

__all__ = ["Ownership"]

logger = logging.getLogger(__name__)


class Ownership:
    """The assigned partitions of ``input_topic`` and their bookkeeping."""

    def __init__(
        self,
        input_topic: str,
        consumer: Consumer,
        batch: MicroBatch,
        committer: Committer,
        link: BrokerLink,
        metrics: WorkerMetrics,
        settle: Callable[[], None],
    ) -> None:
        self.input_topic, self.consumer, self.batch = input_topic, consumer, batch
        self.committer, self.link, self.metrics = committer, link, metrics
        #: Finishes the batch in flight: called before any partition's records are dropped.
        self.settle = settle
        self.assigned: set[Partition] = set()

    def gained(self, assigned: set[Partition]) -> None:
        self.assigned |= assigned

    def gone(self, partitions: set[Partition]) -> None:
        """Partitions no longer this worker's: drop their records in hand, forget them."""
        self.settle()
        dropped = self.batch.drop(partitions, self.partition_of)
        if dropped:
            logger.info("dropped %d records of partitions this worker no longer owns", dropped)
        self.committer.forget(partitions)
        self.assigned -= partitions
        self.metrics.forget_lag(partitions)

    def update_lag(self) -> None:
        for partition in self.assigned:
            high = self.consumer.highwater(partition)
            position = self.committer.position(partition)
            if high is not None and position is not None:
                self.metrics.set_lag(partition, max(high - position, 0))

    def watch_topic(self) -> None:
        """The input topic deleted and created again (a new topic id): its old positions mean
        nothing in the new one (resuming there skipped its first records)."""
        topic = self.input_topic
        changed = self.link.topic_changed(self.consumer.topic_id(topic))
        if changed is None:
            return
        self.settle()
        partitions = {p for p in self.assigned if p[0] == topic}
        dropped = self.batch.drop(partitions, self.partition_of)
        self.committer.forget(partitions)
        self.consumer.reset_positions(partitions)
        self.metrics.input_topic_recreated.inc()
        logger.warning(
            "input topic %s was deleted and created again (topic id %s -> %s): partitions %s "
            "are read again from where ANOMALY_AUTO_OFFSET_RESET says; %d records of the old "
            "topic in hand dropped",
            topic,
            *changed,
            sorted(p[1] for p in partitions),
            dropped,
        )

    def partition_of(self, message: Any) -> Partition:
        source = self.consumer.source_of(message)
        return source.topic, source.partition

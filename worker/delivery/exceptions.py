"""The delivery package's errors: the worker stops with nothing committed past what it delivered."""

from worker.exceptions import WorkerError

__all__ = ["DeliveryError", "UndecodableBatchError"]


class DeliveryError(WorkerError):
    """The broker did not acknowledge an alert or dead letter (or a transaction did not
    commit); offsets must not be committed. Root of the delivery package's errors."""


class UndecodableBatchError(DeliveryError):
    """The Kafka client cannot decode a record batch (corrupt, checksum mismatch, unknown codec)
    and ``ANOMALY_ON_UNDECODABLE_BATCH=fail``: the worker stops at it (exit 3)."""

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(
            f"cannot decode the record batch at {topic}[{partition}]@{offset}: {reason} "
            "(ANOMALY_ON_UNDECODABLE_BATCH=skip dead-letters its offsets and goes on)"
        )
        self.topic, self.partition, self.offset, self.reason = topic, partition, offset, reason

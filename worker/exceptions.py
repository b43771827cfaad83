"""Exceptions of the worker package; every one derives from :class:`WorkerError`."""


class WorkerError(Exception):
    """Root of the worker's exceptions."""


class BundleError(WorkerError):
    """A model bundle is missing, corrupt, or does not match what the worker expects."""


class DeliveryError(WorkerError):
    """The broker did not acknowledge an alert or dead letter; offsets must not be committed."""


class OutputTopicError(WorkerError):
    """The alert or dead-letter topic is missing or not writable."""


class TlsError(WorkerError):
    """TLS cannot work with the configured files (the broker's certificate, ours)."""


class UndecodableBatchError(WorkerError):
    """The Kafka client cannot decode a record batch (corrupt, checksum mismatch, unknown codec)."""

    def __init__(self, topic: str, partition: int, offset: int, reason: str) -> None:
        super().__init__(
            f"cannot decode the record batch at {topic}[{partition}]@{offset}: {reason} "
            "(ANOMALY_ON_UNDECODABLE_BATCH=skip dead-letters its offsets and goes on)"
        )
        self.topic, self.partition, self.offset, self.reason = topic, partition, offset, reason

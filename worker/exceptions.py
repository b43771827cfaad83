"""Exceptions of the worker package; every one derives from :class:`WorkerError`."""


class WorkerError(Exception):
    """Root of the worker's exceptions."""


class BundleError(WorkerError):
    """A model bundle is missing, corrupt, or does not match what the worker expects."""


class DeliveryError(WorkerError):
    """The broker did not acknowledge an alert or dead letter; offsets must not be committed."""

"""The contract package's one exception."""

from worker.exceptions import WorkerError

__all__ = ["BundleError"]


class BundleError(WorkerError):
    """A model bundle or registry is missing, corrupt, or does not match what the worker expects."""

"""The root of everything the worker raises.

Each package derives its own root from :class:`WorkerError` (``contract``:
:class:`~worker.contract.exceptions.BundleError`; ``kafka``:
:class:`~worker.kafka.ports.TransportError`; ``delivery``:
:class:`~worker.delivery.exceptions.DeliveryError`), so the entry point can tell a
known fault, said in one line, from a bug, logged with its traceback.
"""

__all__ = ["WorkerError"]


class WorkerError(Exception):
    """Root of the worker's exceptions."""

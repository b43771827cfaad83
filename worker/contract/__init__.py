"""What the worker and ``anomaly-train`` share, so both read records and models the same way.

Owns: the input record contract and its batch decoder (``records``, ``decode``,
``messages``), the model bundle's format and reading (``bundle``), the registry's read
side (``registry``), running a bundle (``scoring``), and measuring drift against a bundle's
reference (``drift``). One exception root: :class:`~worker.contract.exceptions.BundleError`.

May import: :mod:`worker.exceptions` only; no Kafka client, no metrics, no settings.
``training`` writes what this package reads (:mod:`training.publish`).
"""

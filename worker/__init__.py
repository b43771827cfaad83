"""anomaly-worker: score a Kafka topic of feature records with a TorchScript autoencoder.

Owns the worker: the data flow, one package per step::

    kafka (consume) -> core (batch) -> contract (decode, score) -> core (threshold,
    alerts, dead letters) -> delivery (produce, commit) ; model (what scores, hot reload),
    observe (metrics, health, logs) on the side

``pipeline`` runs the loop, ``app`` wires it (the composition root), ``settings`` reads
``ANOMALY_*``, ``cli`` is ``anomaly-worker``.

May import: nothing of ``training`` (the contract between them is the model bundle on disk,
:mod:`worker.contract`). Which package may import which is written in each package's
docstring and checked by ``tests/unit/test_import_rules.py``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

"""anomaly-worker: score a Kafka topic of feature records with a TorchScript autoencoder.

The data flow, one module per step::

    settings -> consumer (transport) -> batching -> records (decode) -> scoring
             -> threshold -> alerts / deadletters (produce) -> offsets (commit)

``transport`` is the interface the pipeline sees; ``transport_kafka_python`` (the
default) and ``transport_confluent`` (librdkafka) implement it.

with ``metrics`` and ``health`` on the side and ``pipeline`` tying the steps
together. ``bundle`` is the on-disk contract with ``training``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"

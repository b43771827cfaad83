"""Kafka in the worker's own terms: every client quirk lives here and nowhere else.

Owns: the ports (``ports``: the consumer and producer protocols, the error taxonomy rooted
at :class:`~worker.kafka.ports.TransportError`, the one commit-on-revoke path), the Kafka
slice of the settings (``settings``) and the option table every client gets (``options``),
the two drivers (``kafka_python``, ``confluent``) and choosing one (``clients``), the TLS
pre-flight (``tls``), and the broker link's health and backoff (``link``).

May import: :mod:`worker.contract`, :mod:`worker.observe`, :mod:`worker.exceptions`. Only
the drivers import a Kafka client; ``training`` may import ``options``, ``ports`` and
``settings``.
"""

"""What the worker tells the outside about itself.

Owns: the Prometheus metrics (``metrics``, with the collectors computed from numpy state in
``collectors``), the ``/metrics``, ``/healthz`` and ``/readyz`` endpoints (``health``), and
the log set-up (``logs``, which ``anomaly-train`` uses too).

May import: :mod:`worker.contract` (the drift monitor it exports, the partition type).
"""

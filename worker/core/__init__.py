"""The pure core of the loop: plain values in, plain values out, unit-testable in milliseconds.

Owns: the micro-batch and when it closes (``batching``), turning scores into decisions
(``threshold``), building alerts (``alerts``) and dead letters (``deadletters``), and the
offsets that may be committed (``offsets``).

May import: :mod:`worker.contract`; no Kafka client, no metrics, no settings, no torch.
"""

"""anomaly-train: fit the autoencoder on normal traffic, calibrate it, publish it, retrain it.

Owns: reading training data (``data``, ``kafka_window``), the model (``model``,
``detector``), fitting and calibrating it (``config``, ``optimise``, ``fit``), its drift
reference (``reference``), publishing bundles and registry versions (``publish``), the
promotion gate, rollback and retention (``promotion``), reports and evaluation
(``report``, ``evaluate``), deciding on drift (``drift_check``), the retraining use cases
(``retrain``), and the command line (``cli`` parses, ``commands`` acts).

May import: from ``worker`` only :mod:`worker.contract`, the Kafka slice
(:mod:`worker.kafka.options`, :mod:`worker.kafka.ports`, :mod:`worker.kafka.settings`) and
:mod:`worker.observe.logs`. ``worker`` never imports ``training``.
"""

"""anomaly-train: fit the autoencoder on normal traffic and write a model bundle.

Flow: ``data`` (load rows) -> ``model`` (autoencoder + scoring module) ->
``fit`` (train, calibrate the threshold, write the bundle with
:func:`worker.bundle.write_bundle`). ``training`` imports ``worker``'s
contracts; ``worker`` never imports ``training``.
"""

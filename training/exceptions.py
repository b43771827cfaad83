"""Exceptions of the training package; every one derives from :class:`TrainingError`."""


class TrainingError(Exception):
    """Root of the training package's exceptions."""


class DataError(TrainingError):
    """An input file cannot be read as a table of numeric features."""

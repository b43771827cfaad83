"""The examples in the pure modules' docstrings run, so they stay true."""

import doctest
import importlib

import pytest

MODULES = [
    "training.cli",
    "worker.alerts",
    "worker.batching",
    "worker.deadletters",
    "worker.drift",
    "worker.logs",
    "worker.offsets",
    "worker.records",
    "worker.threshold",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0

"""The examples in the pure modules' docstrings run, so they stay true."""

import doctest
import importlib

import pytest

MODULES = [
    "training.alarm_figures",
    "training.commands",
    "training.reference",
    "worker.contract.drift",
    "worker.contract.recent_threshold",
    "worker.contract.records",
    "worker.core.alerts",
    "worker.core.batching",
    "worker.core.deadletters",
    "worker.core.offsets",
    "worker.core.scores",
    "worker.core.threshold",
    "worker.observe.logs",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0

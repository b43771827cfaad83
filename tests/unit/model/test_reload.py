"""Hot reload: a newly promoted model is loaded and verified off the hot path, or refused."""

import time

import numpy as np
import pytest

from tests.helpers import registry_with, write_distance_bundle
from worker.contract.bundle import MODEL_FILE
from worker.contract.scoring import Scorer
from worker.model.reload import ModelWatcher


def test_watcher_parks_a_verified_new_model_and_refuses_broken_ones(tmp_path):
    registry = registry_with(tmp_path, "v1", "v2", "bad")
    registry.add(
        "other-features",
        lambda d: write_distance_bundle(d, names=("a", "b", "c", "d"), version="x"),
    )
    with (registry.path_of("bad") / MODEL_FILE).open("ab") as handle:
        handle.write(b"corrupt")
    registry.set_current("v1", "test")
    results = []
    serving = Scorer.load(registry.path_of("v1"), "cpu")
    watcher = ModelWatcher(
        registry.root, serving, "v1", "cpu", 60, lambda r, v: results.append((r, v))
    )

    watcher.check()
    assert watcher.take() is None  # nothing new

    registry.set_current("bad", "test")
    watcher.check()
    assert watcher.take() is None and results == [("refused", "bad")]

    registry.set_current("other-features", "test")
    watcher.check()
    assert watcher.take() is None and results[-1] == ("refused", "other-features")

    registry.set_current("v2", "test")
    watcher.check()
    new = watcher.take()
    assert new is not None and new.metadata.version == "v2"
    assert watcher.take() is None  # handed over once
    np.testing.assert_allclose(new.score(np.ones((1, 4), np.float32)).scores, [1.0])


def _truncate_metadata(path):
    bundle_json = path / "bundle.json"
    bundle_json.write_text(bundle_json.read_text()[:40])


def _vanish(path):
    import shutil

    shutil.rmtree(path)


def _unreadable_model(path, monkeypatch):
    real = Scorer.load.__func__

    def load(cls, directory, device="auto"):
        if directory == path:
            raise PermissionError(13, "Permission denied", str(directory / MODEL_FILE))
        return real(cls, directory, device)

    monkeypatch.setattr(Scorer, "load", classmethod(load))


def _io_error_mid_load(path, monkeypatch):
    real = Scorer.load.__func__

    def load(cls, directory, device="auto"):
        if directory == path:
            raise OSError(5, "Input/output error")  # not a BundleError: the old watcher died here
        return real(cls, directory, device)

    monkeypatch.setattr(Scorer, "load", classmethod(load))


@pytest.mark.parametrize(
    "inject",
    [
        lambda path, mp: _truncate_metadata(path),
        lambda path, mp: _vanish(path),  # pruned between CURRENT and the load
        _unreadable_model,
        _io_error_mid_load,
    ],
    ids=["truncated-bundle-json", "pruned-mid-load", "permission-error", "oserror"],
)
def test_the_watcher_survives_any_fault_counts_it_once_and_retries(
    tmp_path, monkeypatch, caplog, inject
):
    registry = registry_with(tmp_path, "v1", "v2", "v3")
    registry.set_current("v1", "test")
    results = []
    served = Scorer.load(registry.path_of("v1"), "cpu")
    watcher = ModelWatcher(
        registry.root, served, "v1", "cpu", 0.01, on_result=lambda r, v: results.append((r, v))
    )
    inject(registry.path_of("v2"), monkeypatch)
    registry_current = registry.root / "CURRENT"
    registry_current.write_text("v2\n")
    for _ in range(3):
        watcher.check()  # never raises
    assert results == [("refused", "v2")]
    assert watcher.take() is None
    assert sum("model v2 refused" in r.getMessage() for r in caplog.records) == 1
    # The thread keeps watching: the next good version is served.
    registry.set_current("v3", "test")
    watcher.start()
    try:
        deadline = time.monotonic() + 5
        while (parked := watcher.take()) is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watcher.stop()
    assert parked is not None and parked.metadata.version == "v3"


def test_a_model_of_other_features_is_refused_saying_how_and_not_reloaded_each_poll(
    tmp_path, monkeypatch, caplog
):
    """6 features promoted (with --force) while 8 are served: the refusal names every
    difference, and the version is not loaded again at each poll."""
    eight = tuple(f"m{i}" for i in range(8))
    six = ("m0", "m1", "m4", "m5", "m6", "extra")
    registry = registry_with(tmp_path, "v1", names=eight)
    registry.add("v6", lambda d: write_distance_bundle(d, names=six, version="v6"))
    registry.set_current("v1", "test")
    served = Scorer.load(registry.path_of("v1"), "cpu")
    loads = []
    real = Scorer.load.__func__
    monkeypatch.setattr(
        Scorer, "load", classmethod(lambda cls, d, device="auto": loads.append(d) or real(cls, d))
    )
    results = []
    watcher = ModelWatcher(registry.root, served, "v1", "cpu", 60, lambda r, v: results.append(r))
    registry.set_current("v6", "test")
    for _ in range(5):
        watcher.check()
    assert loads == [] and results == ["refused"] and watcher.take() is None
    (line,) = [r.getMessage() for r in caplog.records if "model v6 refused" in r.getMessage()]
    assert "8 -> 6 features: removed m2, m3, m7; added extra" in line, line
    # The version's bundle.json rewritten (here: the same features again) is looked at anew.
    time.sleep(0.01)
    (registry.path_of("v6") / "bundle.json").write_text(
        (registry.path_of("v6") / "bundle.json").read_text()
    )
    watcher.check()
    assert loads == [] and results == ["refused"]  # still refused, still logged once

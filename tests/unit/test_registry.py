import threading
import time

import numpy as np
import pytest

from tests.helpers import NAMES, write_distance_bundle
from worker.bundle import MODEL_FILE, read_metadata
from worker.exceptions import BundleError
from worker.registry import Registry, resolve_bundle
from worker.reload import ModelWatcher
from worker.scoring import Scorer


def registry_with(tmp_path, *versions, names=NAMES):
    registry = Registry.create(tmp_path / "registry")
    for version in versions:
        registry.add(version, lambda d, v=version: write_distance_bundle(d, names=names, version=v))
    return registry


def test_resolves_the_current_version(tmp_path):
    registry = registry_with(tmp_path, "v1", "v2")
    with pytest.raises(BundleError, match="no current model"):
        resolve_bundle(registry.root)
    registry.set_current("v2", "test")
    path, version = resolve_bundle(registry.root)
    assert version == "v2" and read_metadata(path).version == "v2"
    assert registry.versions() == ["v1", "v2"]
    assert [h["version"] for h in registry.history()] == ["v2"]
    # A plain bundle directory resolves to itself.
    assert resolve_bundle(registry.path_of("v1")) == (registry.path_of("v1"), None)


def test_a_failed_registration_leaves_nothing(tmp_path):
    registry = registry_with(tmp_path)

    def half_written(directory):
        (directory / MODEL_FILE).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        registry.add("v9", half_written)
    assert registry.versions() == []
    assert list((registry.root / "versions").iterdir()) == []


def test_current_and_removal_rules(tmp_path):
    registry = registry_with(tmp_path, "v1", "v2")
    with pytest.raises(BundleError, match="not registered"):
        registry.set_current("v3", "test")
    registry.set_current("v1", "test")
    with pytest.raises(BundleError, match="is current"):
        registry.remove("v1")
    registry.remove("v2")
    assert registry.versions() == ["v1"]
    with pytest.raises(BundleError):
        registry.path_of("../etc")


def test_readers_never_see_a_half_written_state_under_concurrent_promotions(tmp_path):
    registry = registry_with(tmp_path, "v1", "v2")
    registry.set_current("v1", "test")
    stop = threading.Event()
    errors: list[BaseException] = []

    def promote_back_and_forth():
        i = 0
        while not stop.is_set():
            registry.set_current("v2" if i % 2 else "v1", "flip")
            i += 1

    def add_versions():
        for i in range(30):
            if stop.is_set():
                return
            registry.add(
                f"v{100 + i}", lambda d, i=i: write_distance_bundle(d, version=f"v{100 + i}")
            )

    def read():
        while not stop.is_set():
            try:
                path, version = resolve_bundle(registry.root)
                assert read_metadata(path).version == version
                for listed in registry.versions():
                    assert read_metadata(registry.path_of(listed)).version == listed
            except BaseException as exc:
                errors.append(exc)
                return

    threads = [
        threading.Thread(target=f) for f in (promote_back_and_forth, add_versions, read, read)
    ]
    for t in threads:
        t.start()
    time.sleep(2.0)
    stop.set()
    for t in threads:
        t.join(timeout=10)
    assert errors == []
    assert len(registry.versions()) == 32


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

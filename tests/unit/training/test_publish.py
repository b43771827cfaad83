"""Publishing to a registry: every write a rename, so readers never see half of one."""

import threading
import time

import pytest

from tests.helpers import registry_with, write_distance_bundle
from worker.contract.bundle import MODEL_FILE, read_metadata
from worker.contract.exceptions import BundleError
from worker.contract.registry import resolve_bundle


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

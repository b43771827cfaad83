import json

import numpy as np
import pytest
import torch

from tests.helpers import NAMES, write_distance_bundle
from worker.contract.bundle import METADATA_FILE, MODEL_FILE, read_metadata
from worker.contract.exceptions import BundleError
from worker.contract.scoring import Scorer, resolve_device


def test_scores_a_batch_and_explains_selected_rows(tmp_path):
    write_distance_bundle(tmp_path)
    scorer = Scorer.load(tmp_path, "cpu")
    x = np.array([[0, 0, 0, 0], [2, 2, 2, 2], [0, 0, 0, 4]], dtype=np.float32)
    scored = scorer.score(x)
    np.testing.assert_allclose(scored.scores, [0.0, 4.0, 4.0])
    errors, expected = scored.details(np.array([2]))
    np.testing.assert_allclose(errors, [[0, 0, 0, 16]])
    np.testing.assert_allclose(expected, [[0, 0, 0, 0]])


def test_metadata_round_trip(tmp_path):
    written = write_distance_bundle(tmp_path, threshold=3.5, version="v9")
    read = read_metadata(tmp_path)
    assert read == written
    assert read.n_features == len(NAMES) and read.threshold == 3.5
    assert json.loads((tmp_path / METADATA_FILE).read_text())["n_features"] == 4


def test_a_modified_model_file_fails_the_checksum(tmp_path):
    write_distance_bundle(tmp_path)
    with (tmp_path / MODEL_FILE).open("ab") as handle:
        handle.write(b"tampered")
    with pytest.raises(BundleError, match="checksum mismatch"):
        Scorer.load(tmp_path, "cpu")


def test_feature_count_mismatch_between_metadata_and_module(tmp_path):
    write_distance_bundle(tmp_path)  # module built for 4 features
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    meta["feature_names"] = ["a", "b", "c"]
    meta["n_features"] = 3
    (tmp_path / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"does not accept \[B, 3\]"):
        Scorer.load(tmp_path, "cpu")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": 99}, "format_version"),
        ({"threshold": None}, "malformed"),
        ({"n_features": 7}, "n_features=7"),
    ],
)
def test_bad_metadata_is_a_clear_error(tmp_path, change, message):
    write_distance_bundle(tmp_path)
    meta = json.loads((tmp_path / METADATA_FILE).read_text())
    meta.update(change)
    (tmp_path / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=message):
        read_metadata(tmp_path)


def test_missing_bundle_says_how_to_make_one(tmp_path):
    with pytest.raises(BundleError, match="anomaly-train fit"):
        Scorer.load(tmp_path / "nowhere", "cpu")


def test_cuda_requested_without_a_gpu_is_an_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(BundleError, match="cuda"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"

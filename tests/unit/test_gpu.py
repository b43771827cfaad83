import numpy as np
import pytest
import torch

from tests.helpers import write_distance_bundle
from worker.contract.scoring import Scorer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


def test_scorer_runs_on_cuda_and_matches_cpu(tmp_path):
    write_distance_bundle(tmp_path)
    x = np.random.default_rng(0).normal(size=(4096, 4)).astype(np.float32)
    gpu = Scorer.load(tmp_path, "cuda")
    cpu = Scorer.load(tmp_path, "cpu")
    assert gpu.device.type == "cuda"
    assert next(iter(gpu.module.buffers())).device.type == "cuda"
    scored = gpu.score(x)
    np.testing.assert_allclose(scored.scores, cpu.score(x).scores, rtol=1e-5)
    errors, expected = scored.details(np.array([0, 4095]))
    assert errors.shape == (2, 4) and expected.shape == (2, 4)


def test_auto_picks_cuda(tmp_path):
    write_distance_bundle(tmp_path)
    assert Scorer.load(tmp_path, "auto").device.type == "cuda"


def test_default_trained_bundle_scores_the_same_on_cuda(tmp_path):
    # The combined score (autoencoder + memory of normal rows + tail table) on the device the worker
    # picks: the same scores and the same alert decisions as on the CPU.
    from training.config import FitConfig
    from training.data import Table
    from training.fit import fit_bundle

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5000, 6)).astype(np.float32)
    metadata = fit_bundle(Table(X, tuple("abcdef")), tmp_path / "m", FitConfig(epochs=5))
    probe = np.vstack([rng.normal(size=(4000, 6)), 4 * rng.normal(size=(96, 6))])
    probe = probe.astype(np.float32)
    gpu = Scorer.load(tmp_path / "m", "cuda").score(probe).scores
    cpu = Scorer.load(tmp_path / "m", "cpu").score(probe).scores
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
    agree = (gpu > metadata.threshold) == (cpu > metadata.threshold)
    assert agree.mean() >= 0.999

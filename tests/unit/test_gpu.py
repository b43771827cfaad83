import numpy as np
import pytest
import torch

from tests.helpers import write_distance_bundle
from worker.scoring import Scorer

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

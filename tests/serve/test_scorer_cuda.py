"""The scorer on CUDA gives the CPU scorer's scores and explanations, returned on the CPU (skipped without a
GPU; CI is CPU-only). ``ServeConfig(device=...)`` refuses a device this machine lacks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.serve.serve_testing import SNAPSHOT_TS, heavy_users
from twinv2.checkpoints import load_model
from twinv2.compress import load_compressed
from twinv2.data.batches import BatchBuilder
from twinv2.data.split import Samples
from twinv2.data.store import load_dataset
from twinv2.errors import ConfigError
from twinv2.serve.scorer import Scorer
from twinv2.serve.service import ServeConfig

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("long_term", ["twinv2", "twin"])
def test_cuda_scorer_matches_the_cpu_scorer(serve_data, long_term):
    dataset = load_dataset(serve_data["dataset"])
    cpu_model, info = load_model(serve_data[long_term], "cpu")
    cuda_model, _ = load_model(serve_data[long_term], "cuda")
    compressed = load_compressed(serve_data["compressed"]) if long_term == "twinv2" else None
    builder = BatchBuilder(dataset, info.sequence_config, compressed)
    candidates = torch.arange(1, dataset.manifest.num_items + 1)
    cpu, cuda = Scorer(cpu_model, chunk=7, esu_chunk=11), Scorer(cuda_model, chunk=7, esu_chunk=11)
    assert cuda.device.type == "cuda"
    for user in heavy_users(dataset):
        one = Samples(user_id=np.array([user]), ts=np.array([SNAPSHOT_TS + 1000]), item_id=np.array([1]),
                      label=np.zeros(1, np.int8), event_row=np.zeros(1, np.int64))
        batch = builder.build(one)
        expected, expected_expl = cpu.score(batch.long, batch.short, candidates, explain=3)
        got, expl = cuda.score(batch.long, batch.short, candidates, explain=3)
        assert got.device.type == "cpu" and expl.positions.device.type == "cpu"
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
        torch.testing.assert_close(expl.weights, expected_expl.weights, rtol=0, atol=1e-4)
        naive = cuda.score_forward(batch.long, batch.short, candidates)
        torch.testing.assert_close(naive, expected, rtol=0, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_serve_config_refuses_cuda_without_a_gpu():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        ServeConfig(checkpoint="x.pt", device="cuda")


def test_serve_config_refuses_an_unknown_device():
    with pytest.raises(ConfigError, match=r"--device 'gpu0'"):
        ServeConfig(checkpoint="x.pt", device="gpu0")

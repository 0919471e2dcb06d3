"""Devices and precision: mixed precision (bf16) trains on the CPU, fp16 asks for CUDA, and with a GPU every
model trains and evaluates on CUDA (skipped without one; CI is CPU-only)."""

from __future__ import annotations

import io
import math

import pytest
import torch
from rich.console import Console

from tests.train.conftest import tiny_config
from twinv2.data.store import load_dataset
from twinv2.errors import ConfigError
from twinv2.models.config import LONG_TERM_NAMES
from twinv2.train.checkpoint import load_checkpoint
from twinv2.train.evaluate import evaluate_checkpoint
from twinv2.train.loop import train_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def dataset(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir)


@pytest.fixture(scope="module")
def clusters(dataset, tmp_path_factory):
    from twinv2.compress import compress_dataset
    from twinv2.train.inputs import make_split

    out = tmp_path_factory.mktemp("clusters") / "train"
    compress_dataset(dataset.path, out, make_split(dataset, tiny_config()).snapshot_ts, workers=1, progress=False)
    return out


def _quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.mark.parametrize("name", LONG_TERM_NAMES)
def test_bf16_autocast_trains_every_model_on_the_cpu(dataset, clusters, tmp_path, name):
    """The autocast path of every model (the same code runs under CUDA autocast)."""
    result = train_model(dataset, tmp_path / name, tiny_config(model__long_term=name, train__amp="bf16",
                                                               train__max_steps=4),
                         compressed=clusters if name == "twinv2" else None, show_progress=False, console=_quiet())
    assert result.steps == 4 and all(math.isfinite(v) for _, v in result.loss_curve)
    assert 0.0 <= result.best["auc"] <= 1.0
    # Weights stay float32 (autocast computes in bf16, the parameters and the checkpoint do not change type).
    model, _ = load_checkpoint(result.last_checkpoint)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_fp16_without_cuda_is_a_clear_error(dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.amp=fp16 needs a CUDA device"):
        train_model(dataset, tmp_path / "fp16", tiny_config(model__long_term="twin", train__amp="fp16"),
                    show_progress=False, console=_quiet())


def test_unknown_amp_mode_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train\.amp"):
        tiny_config(train__amp="float8")


@needs_cuda
@pytest.mark.parametrize("name", LONG_TERM_NAMES)
@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_every_model_trains_and_evaluates_on_cuda(dataset, clusters, tmp_path, name, amp):
    cfg = tiny_config(model__long_term=name, train__device="cuda", train__amp=amp, train__max_steps=4,
                      optim__sparse_embeddings=amp == "none")
    result = train_model(dataset, tmp_path / name, cfg, compressed=clusters if name == "twinv2" else None,
                         show_progress=False, console=_quiet())
    assert result.steps == 4 and all(math.isfinite(v) for _, v in result.loss_curve)
    on_cuda = evaluate_checkpoint(result.best_checkpoint, "test", device="cuda", show_progress=False)
    on_cpu = evaluate_checkpoint(result.best_checkpoint, "test", device="cpu", show_progress=False)
    assert on_cuda["auc"] == pytest.approx(on_cpu["auc"], abs=1e-3)


@needs_cuda
def test_a_cuda_run_resumes_on_the_cpu(dataset, tmp_path):
    cfg = tiny_config(model__long_term="twin", train__device="cuda", train__max_steps=2, train__epochs=2)
    train_model(dataset, tmp_path / "r", cfg, show_progress=False, console=_quiet())
    resumed = train_model(dataset, tmp_path / "r", tiny_config(model__long_term="twin", train__device="cpu",
                                                                train__max_steps=4, train__epochs=2),
                          resume=True, show_progress=False, console=_quiet())
    assert resumed.steps == 4

"""Fixtures for training tests: a tiny model config that trains in a second on the tiny dataset."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from twinv2.train.config import TrainConfig, apply_overrides

TINY_OVERRIDES = {
    "model.id_dim": 8, "model.feature_dim": 4, "model.num_heads": 2, "model.head_dim": 4,
    "model.esu_size": 8, "model.short_len": 10, "model.din_len": 10, "model.mlp_dims": [16],
    "data.long_len": 30, "data.max_valid_samples": 400,
    "split.snapshot": 0.5, "split.valid": 0.7, "split.test": 0.85,
    "train.batch_size": 64, "train.eval_batch_size": 256, "train.epochs": 1, "train.device": "cpu",
    "train.num_threads": 1,
}


def tiny_config(**overrides) -> TrainConfig:
    """The tiny config with ``section__key=value`` keyword overrides (``train__epochs=2``)."""
    cfg = apply_overrides(TrainConfig(), TINY_OVERRIDES)
    return apply_overrides(cfg, {k.replace("__", "."): v for k, v in overrides.items()})


@pytest.fixture
def quiet() -> Console:
    """A console that swallows output (progress bars and validation lines)."""
    return Console(file=io.StringIO(), width=120)

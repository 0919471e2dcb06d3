"""Builders for the serving tests: a tiny dataset, its compressed life cycles and saved checkpoints.

A uniquely named module (not conftest) so test files and subprocesses can import it unambiguously."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tests.conftest import make_tiny_dataset
from twinv2.compress import compress_dataset
from twinv2.data.batches import SequenceConfig
from twinv2.data.split import TemporalSplit
from twinv2.data.store import Dataset, load_dataset
from twinv2.models import build_model
from twinv2.train.checkpoint import save_checkpoint
from twinv2.train.config import TrainConfig, apply_overrides

SNAPSHOT_TS = 6_000  # the tiny dataset spans ts 0..9990
LONG_LEN, SHORT_LEN, ESU_SIZE = 60, 10, 8
MODEL_OVERRIDES = {"model.id_dim": 8, "model.feature_dim": 4, "model.num_heads": 2, "model.head_dim": 4,
                   "model.esu_size": ESU_SIZE, "model.short_len": SHORT_LEN, "model.mlp_dims": [16],
                   "data.long_len": LONG_LEN, "train.device": "cpu"}


def make_dataset(out: Path) -> Dataset:
    """20 users with ~300 behaviors each over 60 items (timestamps with ties)."""
    make_tiny_dataset(out, num_users=20, num_items=60, num_events=6000)
    return load_dataset(out)


def make_compressed(dataset_dir: Path, out: Path) -> Path:
    compress_dataset(dataset_dir, out, SNAPSHOT_TS, workers=1, seed=0, progress=False)
    return out


def train_config(long_term: str, **model: object) -> TrainConfig:
    return apply_overrides(TrainConfig(), {**MODEL_OVERRIDES, "model.long_term": long_term,
                                           **{f"model.{k}": v for k, v in model.items()}})


def sequence_config(long_term: str) -> SequenceConfig:
    return SequenceConfig(long_len=LONG_LEN, short_len=SHORT_LEN,
                          long_source="compressed" if long_term == "twinv2" else "raw")


def save_model(dataset: Dataset, long_term: str, path: Path, compressed: Path | None, seed: int = 0,
               **model: object) -> Path:
    """A randomly initialised model (weights spread out so scores differ clearly) saved as a checkpoint;
    ``model`` overrides model config keys (``esu_null_slot=True``)."""
    cfg = train_config(long_term, **model)
    torch.manual_seed(seed)
    model = build_model(cfg.model, dataset.manifest, dataset.items).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    split = TemporalSplit(SNAPSHOT_TS, 8_000, 9_000, 9_990)
    save_checkpoint(path, model, config=cfg, sequence_config=sequence_config(long_term), split=split,
                    dataset=dataset, compressed_path=compressed, train_state={})
    return path


def heavy_users(dataset: Dataset, count: int = 4) -> np.ndarray:
    """The users with the most behaviors (GSU selection matters for them)."""
    return np.argsort(-dataset.histories.lengths(), kind="stable")[:count]

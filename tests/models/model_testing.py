"""Builders for the model tests: tiny datasets, configs and batches (small dims: milliseconds per test).

A uniquely named module (not conftest) so test files can import from it unambiguously."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import torch

from twinv2.data.batches import Batch, SequenceBatch, sequence_feature_names
from twinv2.data.schema import ColumnSpec
from twinv2.data.store import Dataset, load_dataset, write_dataset
from twinv2.models import ModelConfig

NUM_ITEMS, NUM_USERS, NUM_CATEGORIES, NUM_AUTHORS = 40, 8, 4, 6


def tiny_config(long_term: str = "twin", **overrides) -> ModelConfig:
    """A model config with tiny dimensions (esu_size 5, so GSU selection is exercised at L = 20)."""
    base = dict(long_term=long_term, id_dim=8, feature_dim=4, num_heads=2, head_dim=4, esu_size=5,
                short_len=6, din_len=7, mlp_dims=(16,), eta_hash_bits=8, sdim_num_hashes=6, sdim_hash_bits=2)
    base.update(overrides)
    return ModelConfig(**base)


def write_tiny_dataset(out, seed: int = 0):
    """Items with a category and an author; users with 0..60 events each (user 0 has none)."""
    rng = np.random.default_rng(seed)
    items = pa.table({
        "item_id": pa.array(np.arange(1, NUM_ITEMS + 1), pa.int64()),
        "duration": pa.array(rng.uniform(5, 600, NUM_ITEMS).astype(np.float32), pa.float32()),
        "category_id": pa.array(rng.integers(0, NUM_CATEGORIES, NUM_ITEMS), pa.int64()),
        "author_id": pa.array(rng.integers(0, NUM_AUTHORS, NUM_ITEMS), pa.int64()),
    })
    counts = rng.integers(0, 60, NUM_USERS)
    counts[0] = 0
    users = np.repeat(np.arange(NUM_USERS), counts)
    ts = np.concatenate([np.sort(rng.integers(1_000, 1_000_000, c)) for c in counts])
    n = len(users)
    ratio = rng.uniform(0, 1, n).astype(np.float32)
    events = pa.table({
        "user_id": pa.array(users, pa.int64()), "item_id": pa.array(rng.integers(1, NUM_ITEMS + 1, n), pa.int64()),
        "ts": pa.array(ts, pa.int64()), "label": pa.array(rng.integers(0, 2, n), pa.int8()),
        "play_time": pa.array(ratio * 300, pa.float32()), "completion_ratio": pa.array(ratio, pa.float32()),
    })
    item_columns = [ColumnSpec("item_id", "id", "int64"),
                    ColumnSpec("duration", "inherent_numeric", "float32"),
                    ColumnSpec("category_id", "inherent_categorical", "int64", vocab_size=NUM_CATEGORIES),
                    ColumnSpec("author_id", "inherent_categorical", "int64", vocab_size=NUM_AUTHORS)]
    event_columns = [ColumnSpec("user_id", "id", "int64"), ColumnSpec("item_id", "id", "int64"),
                     ColumnSpec("ts", "timestamp", "int64"), ColumnSpec("label", "label", "int8"),
                     ColumnSpec("play_time", "cross_numeric", "float32"),
                     ColumnSpec("completion_ratio", "cross_numeric", "float32")]
    write_dataset(out, name="tiny", source="test", items=items, events=events, item_columns=item_columns,
                  event_columns=event_columns)
    return load_dataset(out)


def random_sequence(dataset: Dataset, B: int, L: int, rng: np.random.Generator, *, lengths=None,
                    max_size: int = 1) -> SequenceBatch:
    """A random ``[B, L]`` sequence: real behaviors first (``lengths[b]`` of them), padding after.

    Real items get random ids, realistic cross values and cluster sizes in ``[1, max_size]``.
    """
    J = len(sequence_feature_names(dataset.manifest))
    if lengths is None:
        lengths = rng.integers(0, L + 1, B)
        lengths[0] = L  # at least one full row
    mask = np.arange(L)[None, :] < np.asarray(lengths)[:, None]
    item = np.where(mask, rng.integers(1, dataset.manifest.num_items + 1, (B, L)), 0)
    cross = np.zeros((B, L, J), np.float32)
    ratio = rng.uniform(0, 1, (B, L))
    cross[..., 0] = ratio * 300  # play_time
    cross[..., 1] = ratio  # completion_ratio
    cross[..., 2] = rng.integers(0, 2, (B, L))  # label
    cross[..., 3] = np.sort(rng.uniform(10, 1e7, (B, L)), axis=1)  # time_gap grows with position
    cross[~mask] = 0.0
    size = np.where(mask, rng.integers(1, max_size + 1, (B, L)), 0).astype(np.float32)
    return SequenceBatch(torch.from_numpy(item), torch.from_numpy(cross), torch.from_numpy(size),
                         torch.from_numpy(mask))


def random_batch(dataset: Dataset, B: int = 6, L: int = 20, S: int = 8, seed: int = 0, *, lengths=None,
                 max_size: int = 1) -> Batch:
    """A directly constructed batch with random long (``[B, L]``) and short (``[B, S]``) sequences."""
    rng = np.random.default_rng(seed)
    long = random_sequence(dataset, B, L, rng, lengths=lengths, max_size=max_size)
    short = random_sequence(dataset, B, S, rng)
    return Batch(user_id=torch.arange(B), ts=torch.full((B,), 2_000_000),
                 target_item=torch.from_numpy(rng.integers(1, dataset.manifest.num_items + 1, B)),
                 label=torch.from_numpy(rng.integers(0, 2, B).astype(np.float32)),
                 history_length=long.mask.sum(1), long=long, short=short)


def replace_sequence(batch: Batch, **long_fields) -> Batch:
    """A copy of ``batch`` whose long sequence has the given fields replaced."""
    return dataclasses.replace(batch, long=dataclasses.replace(batch.long, **long_fields))

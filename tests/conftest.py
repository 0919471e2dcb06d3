"""Shared test fixtures: tiny datasets written through the real writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from twinv2.data.schema import ColumnSpec
from twinv2.data.store import write_dataset

ITEM_COLUMNS = [
    ColumnSpec("item_id", "id", "int64"),
    ColumnSpec("category_id", "inherent_categorical", "int64", vocab_size=8),
    ColumnSpec("duration", "inherent_numeric", "float32"),
    ColumnSpec("raw_item_id", "raw_id", "string"),
]
EVENT_COLUMNS = [
    ColumnSpec("user_id", "id", "int64"),
    ColumnSpec("item_id", "id", "int64"),
    ColumnSpec("ts", "timestamp", "int64"),
    ColumnSpec("label", "label", "int8"),
    ColumnSpec("play_time", "cross_numeric", "float32"),
    ColumnSpec("completion_ratio", "cross_numeric", "float32"),
]


def tiny_tables(num_users: int = 20, num_items: int = 60, num_events: int = 3000, seed: int = 0,
                time_span: int = 10_000) -> tuple[pa.Table, pa.Table]:
    """Random items and (user, ts)-sorted events with plenty of timestamp ties."""
    rng = np.random.default_rng(seed)
    duration = rng.uniform(5, 120, num_items).astype(np.float32)
    items = pa.table({
        "item_id": pa.array(np.arange(1, num_items + 1), pa.int64()),
        "category_id": pa.array(rng.integers(1, 8, num_items), pa.int64()),
        "duration": pa.array(duration),
        "raw_item_id": pa.array([f"i{i}" for i in range(num_items)]),
    })
    users = rng.integers(0, num_users, num_events)
    ts = rng.integers(0, time_span // 10, num_events) * 10  # coarse clock: many ties
    order = np.lexsort((ts, users))
    item_id = rng.integers(1, num_items + 1, num_events)
    play = (rng.uniform(0, 1, num_events) * duration[item_id - 1]).astype(np.float32)
    events = pa.table({
        "user_id": pa.array(users[order], pa.int64()),
        "item_id": pa.array(item_id, pa.int64()),
        "ts": pa.array(ts[order], pa.int64()),
        "label": pa.array(rng.integers(0, 2, num_events).astype(np.int8)),
        "play_time": pa.array(play),
        "completion_ratio": pa.array(np.clip(play / duration[item_id - 1], 0, 1).astype(np.float32)),
    })
    return items, events


def make_tiny_dataset(out: Path, **kwargs) -> Path:
    """Write a tiny valid dataset folder at ``out`` and return it."""
    items, events = tiny_tables(**kwargs)
    write_dataset(out, name="tiny", source="test", items=items, events=events, item_columns=ITEM_COLUMNS,
                  event_columns=EVENT_COLUMNS)
    return out


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory) -> Path:
    """A tiny dataset folder shared (read-only) by the whole session."""
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny") / "ds")

"""A small dataset for the compression job tests: edge-case users, timestamp ties, an extra cross numeric
and an extra item numeric, and users with interests so co-occurrence embeddings have structure."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from twinv2.data.schema import ColumnSpec
from twinv2.data.store import write_dataset

SNAPSHOT = 7_000
GAMMA = 6
NUM_ITEMS = 48

ITEM_COLUMNS = [
    ColumnSpec("item_id", "id", "int64"),
    ColumnSpec("category_id", "inherent_categorical", "int64", vocab_size=6),
    ColumnSpec("duration", "inherent_numeric", "float32"),
    ColumnSpec("popularity", "inherent_numeric", "float32"),
    ColumnSpec("raw_item_id", "raw_id", "string"),
]
EVENT_COLUMNS = [
    ColumnSpec("user_id", "id", "int64"),
    ColumnSpec("item_id", "id", "int64"),
    ColumnSpec("ts", "timestamp", "int64"),
    ColumnSpec("label", "label", "int8"),
    ColumnSpec("play_time", "cross_numeric", "float32"),
    ColumnSpec("completion_ratio", "cross_numeric", "float32"),
    ColumnSpec("position", "cross_numeric", "float32"),
]


def job_tables(num_users: int = 22, seed: int = 0, post_snapshot_seed: int | None = None
               ) -> tuple[pa.Table, pa.Table]:
    """Items and (user, ts)-sorted events.

    User 0 has no events, user 1 one event before the snapshot, user 2 exactly ``GAMMA + 1``, user 3 only
    events at or after the snapshot; the rest 0..150 events on a 10-second clock (many ties). With
    ``post_snapshot_seed`` the events at or after ``SNAPSHOT`` get other items, labels and cross values
    (the events before it are unchanged).
    """
    rng = np.random.default_rng(seed)
    duration = rng.uniform(5, 120, NUM_ITEMS).astype(np.float32)
    items = pa.table({
        "item_id": pa.array(np.arange(1, NUM_ITEMS + 1), pa.int64()),
        "category_id": pa.array(rng.integers(1, 6, NUM_ITEMS), pa.int64()),
        "duration": pa.array(duration),
        "popularity": pa.array(rng.uniform(0, 1, NUM_ITEMS).astype(np.float32)),
        "raw_item_id": pa.array([f"m{i}" for i in range(1, NUM_ITEMS + 1)]),
    })
    counts = rng.integers(0, 150, num_users)
    counts[:4] = [0, 1, GAMMA + 1, 20]
    cols: dict[str, list[np.ndarray]] = {"user_id": [], "item_id": [], "ts": []}
    for u, n in enumerate(counts):
        if u == 1 or u == 2:
            ts = rng.integers(0, SNAPSHOT // 10, n) * 10
        elif u == 3:
            ts = rng.integers(SNAPSHOT // 10, 1000, n) * 10
        else:
            ts = rng.integers(0, 1000, n) * 10
        ts = np.sort(ts)
        interests = rng.choice(NUM_ITEMS // 8, size=2, replace=False)  # two blocks of 8 related items
        item = interests[rng.integers(0, 2, n)] * 8 + rng.integers(1, 9, n)
        cols["user_id"].append(np.full(n, u))
        cols["item_id"].append(item)
        cols["ts"].append(ts)
    events = {k: np.concatenate(v) for k, v in cols.items()}
    n = len(events["ts"])
    item = events["item_id"].astype(np.int64)
    label = rng.integers(0, 2, n)
    ratio = rng.uniform(0, 1, n)
    position = rng.integers(0, 30, n).astype(np.float64)
    if post_snapshot_seed is not None:
        late = events["ts"] >= SNAPSHOT
        other = np.random.default_rng(post_snapshot_seed)
        item[late] = other.integers(1, NUM_ITEMS + 1, late.sum())
        label[late] = other.integers(0, 2, late.sum())
        ratio[late] = other.uniform(0, 1, late.sum())
        position[late] = other.integers(0, 30, late.sum())
    events_t = pa.table({
        "user_id": pa.array(events["user_id"].astype(np.int64)),
        "item_id": pa.array(item),
        "ts": pa.array(events["ts"].astype(np.int64)),
        "label": pa.array(label.astype(np.int8)),
        "play_time": pa.array((ratio * duration[item - 1]).astype(np.float32)),
        "completion_ratio": pa.array(ratio.astype(np.float32)),
        "position": pa.array(position.astype(np.float32)),
    })
    return items, events_t


def make_job_dataset(out: Path, **kwargs) -> Path:
    """Write :func:`job_tables` as a dataset folder at ``out``."""
    items, events = job_tables(**kwargs)
    users = pa.table({"user_id": pa.array(np.arange(kwargs.get("num_users", 22)), pa.int64()),
                      "raw_user_id": pa.array([f"u{u}" for u in range(kwargs.get("num_users", 22))])})
    write_dataset(out, name="job", source="test", items=items, events=events, item_columns=ITEM_COLUMNS,
                  event_columns=EVENT_COLUMNS, users=users)
    return out


def folder_digest(path: Path, skip: tuple[str, ...] = ("cluster_sizes.png",)) -> dict[str, str]:
    """sha256 of every file in a folder (recursively), keyed by relative path."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file() and f.name not in skip}

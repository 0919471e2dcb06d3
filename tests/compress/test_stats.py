"""``compression_stats``: member purity on a hand-built example whose expected values are worked out by hand,
folders written before the member shares existed, and the table."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from twinv2.compress import ClusterConfig, compress_dataset, compression_stats
from twinv2.compress.stats import member_purity, render_stats
from twinv2.compress.store import MANIFEST_FILE
from twinv2.data.schema import ColumnSpec
from twinv2.data.store import write_dataset

SNAPSHOT = 1_000
ITEM_COLUMNS = [
    ColumnSpec("item_id", "id", "int64"),
    ColumnSpec("category_id", "inherent_categorical", "int64", vocab_size=8),
    ColumnSpec("author_id", "inherent_categorical", "int64", vocab_size=8),
    ColumnSpec("duration", "inherent_numeric", "float32"),
]
EVENT_COLUMNS = [
    ColumnSpec("user_id", "id", "int64"),
    ColumnSpec("item_id", "id", "int64"),
    ColumnSpec("ts", "timestamp", "int64"),
    ColumnSpec("label", "label", "int8"),
    ColumnSpec("play_time", "cross_numeric", "float32"),
    ColumnSpec("completion_ratio", "cross_numeric", "float32"),
]
# Items 1..5: category, author and embedding. Item 4 points at the middle of items 1, 2, 3 (and of 1, 5).
CATEGORY = [1, 1, 1, 2, 5]
AUTHOR = [1, 1, 2, 1, 3]
EMBEDDING = [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 1]]
# User 0: items 1, 2, 3, 4; user 1: item 5 twice; user 2: items 1, 4, 5. With gamma = 20 and one completion
# group, each user's behaviors form one cluster, whose representative (closest to the centroid) is item 4
# for users 0 and 2, item 5 for user 1.
HISTORIES = [[1, 2, 3, 4], [5, 5], [1, 4, 5]]


@pytest.fixture(scope="module")
def hand_built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("stats")
    items = pa.table({"item_id": pa.array(np.arange(1, 6), pa.int64()),
                      "category_id": pa.array(CATEGORY, pa.int64()), "author_id": pa.array(AUTHOR, pa.int64()),
                      "duration": pa.array(np.full(5, 10.0, np.float32))})
    user = np.concatenate([np.full(len(h), u) for u, h in enumerate(HISTORIES)])
    n = len(user)
    events = pa.table({"user_id": pa.array(user, pa.int64()),
                       "item_id": pa.array(np.concatenate(HISTORIES), pa.int64()),
                       "ts": pa.array(np.concatenate([np.arange(len(h)) * 10 for h in HISTORIES]), pa.int64()),
                       "label": pa.array(np.ones(n, np.int8)), "play_time": pa.array(np.full(n, 5.0, np.float32)),
                       "completion_ratio": pa.array(np.full(n, 0.5, np.float32))})
    ds = root / "ds"
    write_dataset(ds, name="hand", source="test", items=items, events=events, item_columns=ITEM_COLUMNS,
                  event_columns=EVENT_COLUMNS)
    np.save(root / "emb.npy", np.array(EMBEDDING, np.float32))
    np.save(root / "emb.ids.npy", np.arange(1, 6))
    return ds, root / "emb.npy"


def compress(hand_built, out: Path, split_by: str | None = None) -> Path:
    ds, emb = hand_built
    compress_dataset(ds, out, SNAPSHOT, embeddings=str(emb), progress=False,
                     config=ClusterConfig(gamma=20, num_groups=1, split_by=split_by))
    return out


def test_member_purity_by_hand(hand_built, tmp_path):
    s = compression_stats(compress(hand_built, tmp_path / "c"))
    assert s["clusters"] == 3 and s["behaviors"] == 9 and s["split_by"] is None
    # category_id, per user: [1, 1, 1, 2] -> majority 3 of 4, rep item 4 holds 2 (1 member: not a majority
    # value); [5, 5] -> 2 of 2, rep 5 (2); [1, 2, 5] -> 1 of 3 (a three-way tie), rep item 4 holds 2 (1 member,
    # a majority value of the tie). Purity (3 + 2 + 1) / 9, rep = majority in 2 of 3 clusters, the rep's value
    # describes (1 + 2 + 1) / 9 of the members.
    cat = s["member_purity"]["category_id"]
    assert cat["purity"] == pytest.approx(6 / 9) and cat["rep_is_majority"] == pytest.approx(2 / 3)
    assert cat["rep_share"] == pytest.approx(4 / 9)
    assert cat["behaviors_covered"] == 1.0 and cat["clusters_covered"] == 3
    # author_id: [1, 1, 2, 1] -> 3 of 4, rep (author 1) 3; [3, 3] -> 2, rep 2; [1, 1, 3] -> 2 of 3, rep 2.
    author = s["member_purity"]["author_id"]
    assert author["purity"] == pytest.approx(7 / 9) and author["rep_is_majority"] == 1.0
    assert author["rep_share"] == pytest.approx(7 / 9)


def test_member_purity_by_hand_with_split_by(hand_built, tmp_path):
    s = compression_stats(compress(hand_built, tmp_path / "c", split_by="category_id"))
    # Clusters {1, 2, 3} {4} | {5, 5} | {1} {4} {5}: six virtual items for nine behaviors.
    assert s["clusters"] == 6 and s["compression_ratio"] == pytest.approx(6 / 9) and s["split_by"] == "category_id"
    cat = s["member_purity"]["category_id"]
    assert cat["purity"] == 1.0 and cat["rep_is_majority"] == 1.0 and cat["rep_share"] == 1.0
    # author_id: {1, 2, 3} has authors [1, 1, 2] -> 2 of 3; every other cluster is pure: (2 + 1 + 2 + 3) / 9.
    assert s["member_purity"]["author_id"]["purity"] == pytest.approx(8 / 9)


def test_member_purity_handles_unknown_shares():
    p = member_purity(np.array([4, 2, 3]), np.array([0.75, np.nan, 1 / 3], np.float32),
                      np.array([0.25, np.nan, 1 / 3], np.float32))
    assert p["purity"] == pytest.approx(4 / 7) and p["rep_is_majority"] == 0.5
    assert p["rep_share"] == pytest.approx(2 / 7) and p["behaviors_covered"] == pytest.approx(7 / 9)
    assert p["clusters_covered"] == 2
    none = member_purity(np.array([2]), np.array([np.nan]), np.array([np.nan]))
    assert none["purity"] is None and none["behaviors_covered"] == 0.0


def test_stats_of_a_folder_without_member_shares_reports_them_unavailable(hand_built, tmp_path):
    """A folder written before the shares existed: no share columns, no ``member_share_features``."""
    old = tmp_path / "old"
    shutil.copytree(compress(hand_built, tmp_path / "c"), old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    del manifest["member_share_features"]
    del manifest["cluster_config"]["split_by"]
    (old / MANIFEST_FILE).write_text(json.dumps(manifest))
    for part in old.glob("part-*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop([c for c in table.column_names if "share_" in c]), part)
    s = compression_stats(old)
    assert s["member_purity"] is None and s["split_by"] is None
    assert s["compression_ratio"] == pytest.approx(3 / 9)
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_stats(s))
    text = console.export_text()
    assert "member purity" in text and "unavailable" in text


def test_render_stats_shows_member_purity(hand_built, tmp_path):
    s = compression_stats(compress(hand_built, tmp_path / "c", split_by="category_id"))
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_stats(s))
    text = console.export_text()
    assert "split by category_id" in text and "member purity: author_id" in text and "0.8889" in text

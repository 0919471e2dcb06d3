"""Embedding sources: file formats, the checkpoint contract, the co-occurrence default, bad inputs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.compress.job_testing import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    NUM_ITEMS,
    SNAPSHOT,
    job_tables,
    make_job_dataset,
)
from twinv2.compress.embeddings import (
    EmbeddingSource,
    cooccurrence_embeddings,
    export_cooccurrence_embeddings,
    hashed_gaussian,
    item_embedding_table,
    load_checkpoint_item_embeddings,
    load_embedding_file,
    write_embedding_file,
)
from twinv2.compress.job import compress_dataset
from twinv2.data.store import load_dataset, write_dataset
from twinv2.errors import CheckpointError, CompressionError, ConfigError, EmbeddingError

DIM = 6


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return load_dataset(make_job_dataset(tmp_path_factory.mktemp("emb") / "ds"))


def table_for(path, ds, **kwargs):
    return item_embedding_table(EmbeddingSource.parse(path, **kwargs), ds, before_ts=SNAPSHOT, seed=0)


def test_npy_with_ids_is_keyed_by_dense_item_id(tmp_path, ds):
    rng = np.random.default_rng(0)
    ids = rng.permutation(np.arange(1, NUM_ITEMS + 1))
    matrix = rng.standard_normal((NUM_ITEMS, DIM)).astype(np.float32)
    np.save(tmp_path / "e.npy", matrix)
    np.save(tmp_path / "e.ids.npy", ids)
    t = table_for(tmp_path / "e.npy", ds)
    assert t.table.shape == (NUM_ITEMS + 1, DIM) and t.dim == DIM
    np.testing.assert_array_equal(t.table[ids], matrix)
    assert not t.table[0].any()
    assert t.source["kind"] == "file" and t.source["provided"] == NUM_ITEMS


@pytest.mark.parametrize("layout", ["list", "columns", "raw"])
def test_parquet_layouts_give_the_same_table(tmp_path, ds, layout):
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((NUM_ITEMS, DIM)).astype(np.float32)
    ids = np.arange(1, NUM_ITEMS + 1)
    if layout == "list":
        write_embedding_file(tmp_path / "e.parquet", ids, matrix)
    else:
        cols = {f"e{j}": pa.array(matrix[:, j]) for j in range(DIM)}
        key = {"item_id": pa.array(ids)} if layout == "columns" else {"raw_item_id": pa.array([f"m{i}" for i in ids])}
        pq.write_table(pa.table({**key, **cols}), tmp_path / "e.parquet")
    t = table_for(tmp_path / "e.parquet", ds)
    np.testing.assert_array_equal(t.table[1:], matrix)


def test_raw_keyed_rows_unknown_to_the_dataset_are_skipped_and_counted(tmp_path, ds):
    matrix = np.random.default_rng(2).standard_normal((NUM_ITEMS + 2, DIM)).astype(np.float32)
    raw = [f"m{i}" for i in range(1, NUM_ITEMS + 1)] + ["zz1", "zz2"]
    pq.write_table(pa.table({"raw_item_id": raw, **{f"v{j}": matrix[:, j] for j in range(DIM)}}),
                   tmp_path / "e.parquet")
    t = table_for(tmp_path / "e.parquet", ds)
    assert t.source["unknown_raw_ids_skipped"] == 2
    np.testing.assert_array_equal(t.table[1:], matrix[:NUM_ITEMS])


def test_checkpoint_item_embeddings_contract(tmp_path, ds):
    """A torch.save dict with a top-level 'item_embeddings' [num_items + 1, d] tensor (row 0 padding)."""
    table = torch.randn(NUM_ITEMS + 1, DIM)
    torch.save({"item_embeddings": table, "manifest_fingerprint": ds.manifest.fingerprint(),
                "model_config": {"id_dim": DIM}}, tmp_path / "model.pt")
    ids, matrix = load_checkpoint_item_embeddings(tmp_path / "model.pt")
    np.testing.assert_array_equal(ids, np.arange(1, NUM_ITEMS + 1))
    np.testing.assert_array_equal(matrix, table[1:].numpy())
    t = table_for(tmp_path / "model.pt", ds)
    np.testing.assert_array_equal(t.table[1:], table[1:].numpy())
    assert t.source["kind"] == "checkpoint"


@pytest.mark.parametrize("payload, error, match", [
    ({"weights": torch.zeros(3)}, CheckpointError, "item_embeddings"),
    ({"item_embeddings": torch.zeros(NUM_ITEMS + 1, DIM), "manifest_fingerprint": "0" * 16}, CheckpointError,
     "fingerprint"),
    ({"item_embeddings": torch.ones(NUM_ITEMS - 4, DIM)}, EmbeddingError, "dimension mismatch"),
    ({"item_embeddings": torch.ones(NUM_ITEMS + 1)}, EmbeddingError, "float tensor"),
])
def test_checkpoint_bad_inputs(tmp_path, ds, payload, error, match):
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(error, match=match):
        table_for(tmp_path / "bad.pt", ds)


def test_checkpoint_with_arbitrary_pickled_objects_is_refused(tmp_path, ds):
    torch.save({"item_embeddings": torch.ones(NUM_ITEMS + 1, DIM), "obj": object()}, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        table_for(tmp_path / "unsafe.pt", ds)


def write_partial(tmp_path, matrix, ids):
    np.save(tmp_path / "p.npy", matrix)
    np.save(tmp_path / "p.ids.npy", ids)
    return tmp_path / "p.npy"


def test_missing_items_error_names_count_and_examples(tmp_path, ds):
    used = np.unique(ds.histories.item_id)
    keep = np.setdiff1d(np.arange(1, NUM_ITEMS + 1), used[:3])
    path = write_partial(tmp_path, np.ones((len(keep), DIM), np.float32), keep)
    with pytest.raises(EmbeddingError, match=rf"3 of the {len(used)} items .* e\.g\. item ids {used[0]}, {used[1]}"):
        table_for(path, ds)
    # The documented fallback: deterministic hashed vectors for the missing ones.
    t1 = table_for(path, ds, missing="random")
    t2 = table_for(path, ds, missing="random")
    np.testing.assert_array_equal(t1.table, t2.table)
    assert t1.source["missing_filled"] == 3 and np.abs(t1.table[used[:3]]).min() > 0


@pytest.mark.parametrize("case, match", [
    ("nan", "2 embeddings hold NaN"),
    ("ids_length", "dimension mismatch: 47 ids for 48"),
    ("out_of_range", "outside the dataset's 1..48"),
    ("duplicate", "appear more than once"),
    ("zero", "all-zero"),
])
def test_bad_embedding_files(tmp_path, ds, case, match):
    matrix = np.random.default_rng(3).standard_normal((NUM_ITEMS, DIM)).astype(np.float32)
    ids = np.arange(1, NUM_ITEMS + 1)
    if case == "nan":
        matrix[[4, 9], 1] = np.nan
    elif case == "ids_length":
        ids = ids[:-1]
    elif case == "out_of_range":
        ids = ids + 5
    elif case == "duplicate":
        ids[3] = ids[4]
    elif case == "zero":
        matrix[np.unique(ds.histories.item_id)[0] - 1] = 0
    with pytest.raises(EmbeddingError, match=match):
        table_for(write_partial(tmp_path, matrix, ids), ds)


def test_ragged_parquet_vectors_are_a_dimension_mismatch(tmp_path, ds):
    vectors = [[1.0] * DIM] * (NUM_ITEMS - 1) + [[1.0] * (DIM + 1)]
    pq.write_table(pa.table({"item_id": np.arange(1, NUM_ITEMS + 1), "embedding": vectors}), tmp_path / "r.parquet")
    with pytest.raises(EmbeddingError, match="dimension mismatch"):
        load_embedding_file(tmp_path / "r.parquet")


def test_bad_embeddings_write_nothing(tmp_path, ds):
    matrix = np.full((NUM_ITEMS, DIM), np.nan, np.float32)
    path = write_partial(tmp_path, matrix, np.arange(1, NUM_ITEMS + 1))
    out = tmp_path / "out"
    with pytest.raises(EmbeddingError):
        compress_dataset(ds.path, out, SNAPSHOT, embeddings=str(path), progress=False)
    assert not out.exists()


def test_embedding_source_parse_rejects_unknown_files():
    with pytest.raises(ConfigError, match="expected 'cooccurrence'"):
        EmbeddingSource.parse("vectors.csv")
    with pytest.raises(ConfigError, match="missing-embedding"):
        EmbeddingSource.parse("cooccurrence", missing="zero")
    assert EmbeddingSource.parse("m.ckpt").kind == "checkpoint"


def test_cooccurrence_embeddings_are_deterministic_and_separate_interests(ds):
    ids, m1, learned = cooccurrence_embeddings(ds.histories, NUM_ITEMS, dim=8, before_ts=SNAPSHOT, seed=5)
    _, m2, _ = cooccurrence_embeddings(ds.histories, NUM_ITEMS, dim=8, before_ts=SNAPSHOT, seed=5)
    np.testing.assert_array_equal(m1, m2)
    assert m1.shape == (NUM_ITEMS, 8) and np.isfinite(m1).all() and learned > NUM_ITEMS // 2
    # Items come in blocks of 8 consumed together: same-block items are more similar than others.
    unit = m1 / np.linalg.norm(m1, axis=1, keepdims=True)
    cos = unit @ unit.T
    block = (ids[:, None] - 1) // 8 == (ids[None, :] - 1) // 8
    off_diagonal = ~np.eye(NUM_ITEMS, dtype=bool)
    assert cos[block & off_diagonal].mean() > cos[~block].mean() + 0.2


def test_cooccurrence_embeddings_ignore_behaviors_after_the_snapshot(tmp_path):
    """No leakage: changing every event at or after the snapshot leaves the table unchanged."""
    tables = []
    for post in (None, 99):
        items, events = job_tables(post_snapshot_seed=post)
        out = tmp_path / f"d{post}"
        write_dataset(out, name="x", source="t", items=items, events=events, item_columns=ITEM_COLUMNS,
                      event_columns=EVENT_COLUMNS)
        tables.append(cooccurrence_embeddings(load_dataset(out).histories, NUM_ITEMS, dim=8, before_ts=SNAPSHOT)[1])
    np.testing.assert_array_equal(tables[0], tables[1])


def test_hashed_gaussian_depends_only_on_seed_and_item():
    a = hashed_gaussian(np.array([5, 9, 11]), 16, seed=3)
    b = hashed_gaussian(np.array([11, 5]), 16, seed=3)
    np.testing.assert_array_equal(a[[2, 0]], b)
    assert not np.array_equal(a, hashed_gaussian(np.array([5, 9, 11]), 16, seed=4))
    big = hashed_gaussian(np.arange(2000), 8, seed=0)
    assert abs(big.mean()) < 0.05 and abs(big.std() - 1) < 0.05


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_export_cooccurrence_embeddings_round_trips(tmp_path, ds, suffix):
    info = export_cooccurrence_embeddings(ds.path, tmp_path / f"e{suffix}", dim=8, before_ts=SNAPSHOT)
    ids, matrix = load_embedding_file(info["path"])
    _, expected, learned = cooccurrence_embeddings(ds.histories, NUM_ITEMS, dim=8, before_ts=SNAPSHOT)
    np.testing.assert_array_equal(ids, np.arange(1, NUM_ITEMS + 1))
    np.testing.assert_array_equal(matrix, expected)
    assert info["items_learned"] == learned
    if suffix == ".parquet":
        assert pq.read_table(info["path"]).column("raw_item_id").to_pylist()[:2] == ["m1", "m2"]


# ---- issue 9: the .npy pair is one unit; checkpoints from another dataset or past the snapshot ------------


def test_npy_pair_failure_while_writing_leaves_the_previous_pair(tmp_path, monkeypatch):
    path = tmp_path / "e.npy"
    write_embedding_file(path, np.arange(1, 4), np.ones((3, 2), np.float32))
    real_save = np.save
    calls = []

    def fail_on_second(fh, array, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(fh, array, *args, **kwargs)

    monkeypatch.setattr(np, "save", fail_on_second)
    with pytest.raises(OSError, match="No space"):
        write_embedding_file(path, np.arange(1, 6), np.zeros((5, 2), np.float32))
    monkeypatch.undo()
    ids, matrix = load_embedding_file(path)
    np.testing.assert_array_equal(ids, np.arange(1, 4))        # the old pair, both halves
    np.testing.assert_array_equal(matrix, np.ones((3, 2), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.ids.npy", "e.npy"]  # no temporaries left


def test_npy_pair_failure_between_the_renames_restores_the_previous_pair(tmp_path, monkeypatch):
    import os

    path = tmp_path / "e.npy"
    write_embedding_file(path, np.arange(1, 4), np.ones((3, 2), np.float32))
    real_replace = os.replace

    def fail_onto_matrix(src, dst, *args, **kwargs):
        if str(dst) == str(path) and ".tmp" in str(src):
            raise OSError(5, "Input/output error", str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", fail_onto_matrix)
    with pytest.raises(OSError, match="Input/output"):
        write_embedding_file(path, np.arange(1, 4) + 10, np.zeros((3, 2), np.float32))
    monkeypatch.undo()
    ids, matrix = load_embedding_file(path)
    np.testing.assert_array_equal(ids, np.arange(1, 4))
    np.testing.assert_array_equal(matrix, np.ones((3, 2), np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.ids.npy", "e.npy"]


def _trained_checkpoint(path, ds, valid_start_ts, **extra):
    """The keys of a twinv2 checkpoint that the embedding source reads (split, identity, table)."""
    from twinv2.data.store import dataset_identity

    torch.save({"item_embeddings": torch.randn(NUM_ITEMS + 1, DIM, generator=torch.Generator().manual_seed(0)),
                "split": {"snapshot_ts": valid_start_ts - 2, "valid_start_ts": valid_start_ts,
                          "test_start_ts": valid_start_ts + 1, "end_ts": valid_start_ts + 2},
                "dataset_identity": dataset_identity(ds), "manifest_fingerprint": ds.manifest.fingerprint(),
                **extra}, path)
    return path


def test_checkpoint_trained_past_the_snapshot_is_refused(tmp_path, ds):
    path = _trained_checkpoint(tmp_path / "late.pt", ds, valid_start_ts=SNAPSHOT + 1)
    with pytest.raises(CompressionError, match=rf"train window ends at {SNAPSHOT + 1}, after the snapshot {SNAPSHOT}"):
        table_for(path, ds)
    # The explicit flag accepts it and says so in the provenance (stored in the compressed manifest).
    t = table_for(path, ds, allow_leakage=True)
    assert t.source["leakage_allowed"] is True and t.source["trained_until_ts"] == SNAPSHOT + 1


def test_checkpoint_trained_up_to_the_snapshot_is_accepted(tmp_path, ds):
    t = table_for(_trained_checkpoint(tmp_path / "ok.pt", ds, valid_start_ts=SNAPSHOT), ds)
    assert t.source["leakage_allowed"] is False and t.source["trained_until_ts"] == SNAPSHOT


def test_leakage_flag_is_recorded_in_the_compressed_manifest(tmp_path, ds):
    import json

    path = _trained_checkpoint(tmp_path / "late.pt", ds, valid_start_ts=SNAPSHOT + 1)
    with pytest.raises(CompressionError, match="leakage"):
        compress_dataset(ds.path, tmp_path / "refused", SNAPSHOT, embeddings=EmbeddingSource.parse(path),
                         workers=1, progress=False)
    assert not (tmp_path / "refused").exists()
    compress_dataset(ds.path, tmp_path / "c", SNAPSHOT, embeddings=EmbeddingSource.parse(path, allow_leakage=True),
                     workers=1, progress=False)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["embeddings"]["leakage_allowed"] is True
    assert manifest["embeddings"]["trained_until_ts"] == SNAPSHOT + 1


def test_checkpoint_of_another_dataset_with_the_same_schema_is_refused(tmp_path, ds):
    from twinv2.data.store import dataset_identity

    other = load_dataset(make_job_dataset(tmp_path / "other", seed=7))
    assert other.manifest.fingerprint() == ds.manifest.fingerprint()  # same schema: the old check passed
    path = _trained_checkpoint(tmp_path / "other.pt", ds, valid_start_ts=SNAPSHOT)
    torch.save({**torch.load(path, weights_only=True), "dataset_identity": dataset_identity(other)}, path)
    with pytest.raises(CheckpointError, match="trained on another dataset"):
        table_for(path, ds)

"""Bounded memory: the local job streams the events part by part and its output equals the in-memory
formulation's (the job before streaming), bit for bit; the co-occurrence embeddings are bit-identical
whatever the chunking and the memory budget."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.compress.job_testing import GAMMA, NUM_ITEMS, SNAPSHOT, folder_digest, make_job_dataset
from twinv2.compress import ClusterConfig, compress_dataset, compress_incremental, job, load_compressed
from twinv2.compress import embeddings as emb
from twinv2.compress.compressor import UserCompressor
from twinv2.compress.store import (
    EMBEDDINGS_FILE,
    concat_columns,
    mean_feature_names,
    open_dataset_events,
    read_part,
    virtual_item_schema,
)
from twinv2.data.store import Histories, load_dataset
from twinv2.errors import CompressionError, DataValidationError

PART = 4
LATER = 9_000


# ---- the in-memory formulation (the job before it streamed), as the reference -----------------------------


def reference_ppmi(h: Histories, num_items: int, window: int, before_ts: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positive PMI entries ``(lo, hi, pmi)`` of the whole log in memory (the former implementation)."""
    row_user = np.repeat(np.arange(h.num_users, dtype=np.int64), h.lengths())
    end = h.end_before(np.arange(h.num_users), np.full(h.num_users, before_ts, np.int64))
    keep = np.arange(len(h.item_id)) < end[row_user]
    items, users = h.item_id[keep], row_user[keep]
    base = np.int64(num_items + 1)
    keys, weights = [], []
    for lag in range(1, window + 1):
        if lag >= len(items):
            break
        a, b = items[:-lag], items[lag:]
        ok = (users[:-lag] == users[lag:]) & (a != b)
        uniq, counts = np.unique(np.minimum(a, b)[ok] * base + np.maximum(a, b)[ok], return_counts=True)
        keys.append(uniq)
        weights.append(counts / lag)
    uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    w = np.bincount(inverse, weights=np.concatenate(weights))
    lo, hi = uniq // base, uniq % base
    item_total = np.bincount(lo, weights=w, minlength=num_items + 1) + np.bincount(hi, weights=w,
                                                                                   minlength=num_items + 1)
    pmi = np.log(w * item_total.sum() / (item_total[lo] * item_total[hi]))
    pos = pmi > 0
    return lo[pos], hi[pos], pmi[pos]


def reference_matmul(lo: np.ndarray, hi: np.ndarray, pmi: np.ndarray, compact: np.ndarray, n: int):
    """``dense -> M @ dense`` by a column-sorted symmetric CSR, summed row by row (the former product)."""
    rows = np.concatenate([compact[lo], compact[hi]])
    cols = np.concatenate([compact[hi], compact[lo]])
    vals = np.concatenate([pmi, pmi])
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])

    def matmul(dense: np.ndarray) -> np.ndarray:
        out = np.zeros((n, dense.shape[1]))
        for i in range(n):
            for p in range(indptr[i], indptr[i + 1]):
                out[i] += vals[p] * dense[cols[p]]
        return out

    return matmul


def reference_cooccurrence(h: Histories, num_items: int, dim: int, window: int, before_ts: int, seed: int
                           ) -> tuple[np.ndarray, int]:
    """Co-occurrence embeddings computed over the whole log in memory (the former implementation)."""
    lo, hi, pmi = reference_ppmi(h, num_items, window, before_ts)
    matrix = np.zeros((num_items + 1, dim), np.float32)
    learned = np.zeros(num_items + 1, bool)
    learned[lo] = learned[hi] = True
    active = np.flatnonzero(learned)
    compact = np.full(num_items + 1, -1, np.int64)
    compact[active] = np.arange(len(active))
    matmul = reference_matmul(lo, hi, pmi, compact, len(active))
    matrix[active] = emb._randomized_embedding(matmul, len(active), dim, seed, 4)
    fallback = np.flatnonzero(~learned[1:]) + 1
    scale = float(np.median(np.linalg.norm(matrix[learned], axis=1)))
    matrix[fallback] = emb.hashed_gaussian(fallback, dim, seed) * np.float32(scale / np.sqrt(dim))
    return matrix[1:], int(learned.sum())


def dense_histories(seed: int = 1) -> Histories:
    """60 users, up to 400 behaviors each, over a catalogue of 300 items (250..300 never seen)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 400, 60)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n = int(offsets[-1])
    items = np.where(rng.random(n) < 0.01, rng.integers(150, 250, n), rng.integers(1, 150, n))
    return Histories(offsets=offsets, item_id=items,
                     ts=np.concatenate([np.sort(rng.integers(0, 1000, k)) for k in lengths]),
                     label=np.zeros(n, np.int8), cross={})


def reference_parts(ds_dir, table: np.ndarray, config: ClusterConfig, snapshot: int, seed: int,
                    users_per_part: int, base=None, old_snapshot: int | None = None) -> list[dict[str, np.ndarray]]:
    """Every part's columns with the whole log in memory (the former job's slicing and group cuts)."""
    ds = load_dataset(ds_dir)
    h = ds.histories
    users = np.arange(h.num_users)
    hi_rows = h.end_before(users, np.full(h.num_users, snapshot))
    lo_rows = h.offsets[:-1] if old_snapshot is None else h.end_before(users, np.full(h.num_users, old_snapshot))
    names = [c.name for c in ds.manifest.item_categoricals]
    comp = UserCompressor(table, {c.name: ds.items[c.name].astype(np.float32) for c in ds.manifest.item_numerics},
                          list(h.cross), mean_feature_names(ds.manifest), config, snapshot,
                          seed).with_item_categoricals(ds.items, names)
    schema = virtual_item_schema(comp.mean_names, comp.share_names)
    parts = []
    for u0 in range(0, h.num_users, users_per_part):
        per_user = []
        old = None if base is None else read_part(base / f"part-{u0 // users_per_part:05d}.parquet")
        for u in range(u0, min(u0 + users_per_part, h.num_users)):
            lo, hi = lo_rows[u], hi_rows[u]
            args = (h.item_id[lo:hi], h.ts[lo:hi], h.label[lo:hi], {n: v[lo:hi] for n, v in h.cross.items()})
            if old is None:
                if hi > lo:
                    per_user.append(comp.compress(u, *args))
                continue
            a, b = np.searchsorted(old["user_id"], [u, u + 1])
            if hi == lo and a == b:
                continue
            groups = None
            if config.group_bins == "quantile":
                completion = h.cross["completion_ratio"]
                new = np.clip(completion[lo:hi].astype(np.float64), 0.0, 1.0)
                ref = np.clip(completion[h.offsets[u]:lo].astype(np.float64), 0.0, 1.0) if lo > h.offsets[u] \
                    else new
                cuts = np.quantile(ref, np.arange(1, config.num_groups) / config.num_groups) if len(ref) else None
                groups = np.zeros(0, np.int8) if cuts is None else \
                    np.searchsorted(cuts, new, side="left").astype(np.int8)
            per_user.append(comp.update(u, {k: v[a:b] for k, v in old.items()}, *args, new_groups=groups))
        parts.append(concat_columns(per_user, schema, table.shape[1]))
    return parts


def assert_parts_equal(out, expected: list[dict[str, np.ndarray]]) -> None:
    for p, columns in enumerate(expected):
        got = read_part(out / f"part-{p:05d}.parquet")
        assert list(got) == list(columns)
        for name, values in columns.items():
            np.testing.assert_array_equal(got[name], values, err_msg=f"part {p} column {name}")


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    return make_job_dataset(tmp_path_factory.mktemp("mem") / "ds")


@pytest.fixture(scope="module")
def small_groups_dir(ds_dir, tmp_path_factory):
    """The same dataset with events.parquet in row groups of 37 rows: parts and chunks straddle them."""
    out = tmp_path_factory.mktemp("mem") / "ds37"
    shutil.copytree(ds_dir, out)
    table = pq.read_table(ds_dir / "events.parquet")
    pq.write_table(table, out / "events.parquet", row_group_size=37, compression="zstd")
    assert pq.ParquetFile(out / "events.parquet").metadata.num_row_groups > 20
    return out


@pytest.fixture
def tiny_budgets(monkeypatch):
    """Chunks of a few dozen behaviors and a co-occurrence budget of a few kilobytes: many buckets, pairs on
    disk."""
    monkeypatch.setattr(job, "CHUNK_ROWS", 50)
    monkeypatch.setattr(job, "COOCCURRENCE_MEMORY", 4096)


# ---- co-occurrence embeddings ----------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [emb.DEFAULT_COOCCURRENCE_MEMORY, 20_000, 1])
@pytest.mark.parametrize("rows", [emb.DEFAULT_CHUNK_ROWS, 64, 1])
def test_cooccurrence_is_bit_identical_to_the_in_memory_formulation(ds_dir, budget, rows, tmp_path):
    ds = load_dataset(ds_dir)
    expected, learned = reference_cooccurrence(ds.histories, NUM_ITEMS, 8, 5, SNAPSHOT, 3)
    ids, matrix, got_learned = emb.cooccurrence_embeddings_from_chunks(
        emb.history_chunks(ds.histories, SNAPSHOT, rows=rows), NUM_ITEMS, dim=8, window=5, seed=3,
        memory_bytes=budget, work_dir=tmp_path)
    np.testing.assert_array_equal(ids, np.arange(1, NUM_ITEMS + 1))
    assert matrix.tobytes() == expected.tobytes() and got_learned == learned
    assert not list(tmp_path.iterdir())  # the temporary folder is gone


def test_cooccurrence_of_a_denser_log_is_bit_identical(tmp_path):
    """Many repeated pairs across chunks and lags (a small catalogue), and hashed vectors for the rest."""
    h = dense_histories()
    expected, learned = reference_cooccurrence(h, 300, 16, 4, 800, 0)
    for budget, rows in ((1 << 30, 10_000), (1_000_000, 1000), (200_000, 100), (1, 7)):
        _, matrix, got = emb.cooccurrence_embeddings_from_chunks(emb.history_chunks(h, 800, rows=rows), 300,
                                                                 dim=16, window=4, seed=0, memory_bytes=budget,
                                                                 work_dir=tmp_path)
        assert matrix.tobytes() == expected.tobytes() and got == learned < 300


@pytest.mark.parametrize("budget", [1 << 30, 1_000_000, 200_000, 1])
def test_ppmi_entries_and_products_are_bit_identical_in_float64(tmp_path, budget):
    """Below the float32 table: every PPMI value and every product of the power iterations, in float64."""
    h = dense_histories()
    lo, hi, pmi = reference_ppmi(h, 300, 4, 800)
    store = emb._PairStore(tmp_path, 300, 4, budget)
    store.spill(emb.history_chunks(h, 800, rows=333))
    learned = store.aggregate()
    held = [np.load(e) if not isinstance(e, tuple) else dict(zip(("lo", "hi", "v"), e, strict=True))
            for e in store.positive]
    spilled = any(not isinstance(e, tuple) for e in store.positive)
    assert spilled == (store.positive_entries * emb._BYTES_PER_PAIR > budget // 2)
    assert (len(store.bounds) > 2) == (budget < 1 << 30)  # several buckets unless everything fits
    np.testing.assert_array_equal(np.concatenate([e["lo"] for e in held]), lo)
    np.testing.assert_array_equal(np.concatenate([e["hi"] for e in held]), hi)
    assert np.concatenate([e["v"] for e in held]).tobytes() == pmi.tobytes()
    active = np.flatnonzero(learned)
    compact = np.full(301, -1, np.int64)
    compact[active] = np.arange(len(active))
    dense = np.random.default_rng(0).standard_normal((len(active), 5))
    expected = reference_matmul(lo, hi, pmi, compact, len(active))(dense)
    assert store.matmul(compact, dense).tobytes() == expected.tobytes()


def test_bucket_bounds_cover_the_items_in_order():
    freq = np.bincount(np.random.default_rng(0).zipf(1.5, 5000) % 1000, minlength=1001)
    for buckets in (1, 2, 17, 5000):
        b = emb._bucket_bounds(freq, buckets)
        assert b[0] == 0 and b[-1] == 1001 and (np.diff(b) > 0).all() and len(b) - 1 <= buckets


# ---- the job ---------------------------------------------------------------------------------------------


def test_streamed_job_equals_the_in_memory_job(ds_dir, tmp_path, tiny_budgets):
    """Every part file, the offsets and the embedding table equal the whole-log formulation's."""
    config = ClusterConfig(gamma=GAMMA)
    out = tmp_path / "c"
    compress_dataset(ds_dir, out, SNAPSHOT, config=config, users_per_part=PART, seed=2, progress=False)
    ds = load_dataset(ds_dir)
    matrix, _ = reference_cooccurrence(ds.histories, NUM_ITEMS, 32, 5, SNAPSHOT, 2)
    table = np.load(out / EMBEDDINGS_FILE)
    assert table[1:].tobytes() == matrix.tobytes() and not table[0].any()
    expected = reference_parts(ds_dir, table, config, SNAPSHOT, 2, PART)
    assert_parts_equal(out, expected)
    c = load_compressed(out)
    sizes = np.array([len(p["user_id"]) for p in expected])
    assert c.num_clusters == sizes.sum()
    np.testing.assert_array_equal(np.diff(c.offsets), np.bincount(np.concatenate([p["user_id"] for p in expected]),
                                                                  minlength=22))


@pytest.mark.parametrize("bins", ["uniform", "quantile"])
def test_streamed_incremental_equals_the_in_memory_one(ds_dir, tmp_path, bins):
    config = ClusterConfig(gamma=GAMMA, group_bins=bins)
    base, new = tmp_path / "base", tmp_path / "new"
    compress_dataset(ds_dir, base, SNAPSHOT, config=config, users_per_part=PART, progress=False)
    compress_incremental(base, ds_dir, new, LATER, progress=False)
    table = np.load(base / EMBEDDINGS_FILE)
    assert_parts_equal(new, reference_parts(ds_dir, table, config, LATER, 0, PART, base=base,
                                            old_snapshot=SNAPSHOT))


def test_row_groups_chunks_budgets_and_workers_change_no_byte(ds_dir, small_groups_dir, tmp_path, monkeypatch):
    config = ClusterConfig(gamma=GAMMA, split_by="category_id")
    compress_dataset(ds_dir, tmp_path / "a", SNAPSHOT, config=config, users_per_part=PART, progress=False)
    monkeypatch.setattr(job, "CHUNK_ROWS", 50)
    monkeypatch.setattr(job, "COOCCURRENCE_MEMORY", 4096)
    compress_dataset(small_groups_dir, tmp_path / "b", SNAPSHOT, config=config, users_per_part=PART,
                     progress=False, workers=2)
    a, b = folder_digest(tmp_path / "a"), folder_digest(tmp_path / "b")
    for name in a:
        if name not in ("job.json", "manifest.json"):  # these name the dataset folder
            assert a[name] == b[name], name
    compress_incremental(tmp_path / "a", ds_dir, tmp_path / "a2", LATER, progress=False)
    compress_incremental(tmp_path / "b", small_groups_dir, tmp_path / "b2", LATER, progress=False)
    a, b = folder_digest(tmp_path / "a2"), folder_digest(tmp_path / "b2")
    assert {k: v for k, v in a.items() if k.endswith((".parquet", ".npy"))} == \
        {k: v for k, v in b.items() if k.endswith((".parquet", ".npy"))}


class _FullReadError(AssertionError):
    pass


def test_the_job_never_reads_the_whole_log(small_groups_dir, tmp_path, monkeypatch, tiny_budgets):
    """Structural bound: no whole-file read of the events, no whole-log CSR arrays, every read at most a few
    row groups, and part tasks are descriptors whose size does not grow with the behaviors."""

    def refuse(*args, **kwargs):
        raise _FullReadError("whole-log read")

    import twinv2.data.store as data_store

    monkeypatch.setattr(data_store, "load_dataset", refuse)
    monkeypatch.setattr(Histories, "end_before", refuse)
    monkeypatch.setattr(Histories, "_search_key", refuse)
    real_read_table = pq.read_table

    def read_table(source, *args, **kwargs):
        if str(source).endswith("events.parquet"):
            raise _FullReadError(f"read_table({source})")
        return real_read_table(source, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", read_table)
    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", refuse)
    rows_read: list[int] = []
    real_group = pq.ParquetFile.read_row_group

    def read_row_group(self, i, *args, **kwargs):
        t = real_group(self, i, *args, **kwargs)
        rows_read.append(t.num_rows)
        return t

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", read_row_group)
    tasks: list[job.PartTask] = []
    real_process = job.process_part

    def process_part(comp, task):
        tasks.append(task)
        return real_process(comp, task)

    monkeypatch.setattr(job, "process_part", process_part)
    out = tmp_path / "c"
    summary = compress_dataset(small_groups_dir, out, SNAPSHOT, config=ClusterConfig(gamma=GAMMA),
                               users_per_part=PART, progress=False)
    assert summary.parts_written == 6 and len(tasks) == 6 and max(rows_read) <= 37
    for task in tasks:
        assert len(pickle.dumps(task)) < 4096  # users, row ranges and the file's row-group index
    compress_incremental(out, small_groups_dir, tmp_path / "c2", LATER, progress=False)
    ds, _ = open_dataset_events(small_groups_dir)
    assert ds.histories.item_id is None and ds.histories.ts is None  # the parent's view has offsets only


def test_invalid_events_in_a_late_row_group_write_nothing(small_groups_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(small_groups_dir, bad)
    table = pq.read_table(bad / "events.parquet")
    ratio = table.column("completion_ratio").to_numpy().copy()
    ratio[-3] = np.nan
    table = table.set_column(table.schema.get_field_index("completion_ratio"), "completion_ratio",
                             [ratio.astype(np.float32)])
    pq.write_table(table, bad / "events.parquet", row_group_size=37)
    with pytest.raises(DataValidationError, match=r"events\.parquet.*completion_ratio"):
        compress_dataset(bad, tmp_path / "c", SNAPSHOT, progress=False)
    assert not (tmp_path / "c").exists()


def test_events_out_of_time_order_are_refused(small_groups_dir, tmp_path):
    """A user's behaviors before S are taken as its first ones: a file out of (user, ts) order is refused."""
    bad = tmp_path / "bad"
    shutil.copytree(small_groups_dir, bad)
    table = pq.read_table(bad / "events.parquet")
    ts = table.column("ts").to_numpy().copy()
    user = table.column("user_id").to_numpy()
    row = int(np.flatnonzero((user[1:] == user[:-1]) & (ts[1:] > ts[:-1]))[-1])  # swap two times in a user
    ts[row], ts[row + 1] = ts[row + 1], ts[row]
    table = table.set_column(table.schema.get_field_index("ts"), "ts", [ts])
    pq.write_table(table, bad / "events.parquet", row_group_size=37)
    with pytest.raises(DataValidationError, match=rf"sorted by \(user_id, ts\).*row {row + 1}"):
        compress_dataset(bad, tmp_path / "c", SNAPSHOT, progress=False)
    assert not (tmp_path / "c").exists()


def test_a_dataset_replaced_during_the_run_is_refused(small_groups_dir, tmp_path):
    ds_copy = tmp_path / "ds"
    shutil.copytree(small_groups_dir, ds_copy)

    def replace_events(parts_done):
        if parts_done == 2:
            table = pq.read_table(ds_copy / "events.parquet")
            pq.write_table(table, ds_copy / "events.parquet", row_group_size=50)

    with pytest.raises(CompressionError, match="changed while the job was reading it"):
        compress_dataset(ds_copy, tmp_path / "c", SNAPSHOT, users_per_part=PART, progress=False,
                         _after_part=replace_events)

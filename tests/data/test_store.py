"""Dataset writer/reader: validation names file and column, writes are atomic, CSR is consistent."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import EVENT_COLUMNS, ITEM_COLUMNS, make_tiny_dataset, tiny_tables
from twinv2.data.schema import ColumnSpec, Manifest
from twinv2.data.store import DatasetWriter, load_dataset, write_dataset
from twinv2.errors import DataValidationError


def _write(out, items, events):
    return write_dataset(out, name="t", source="test", items=items, events=events, item_columns=ITEM_COLUMNS,
                         event_columns=EVENT_COLUMNS)


def test_load_dataset_roundtrip_csr_matches_events(tiny_dataset_dir):
    ds = load_dataset(tiny_dataset_dir)
    h = ds.histories
    events = pq.read_table(tiny_dataset_dir / "events.parquet")
    users = events.column("user_id").to_numpy()
    assert h.offsets[-1] == len(users) == ds.manifest.num_events
    for u in range(h.num_users):
        lo, hi = h.offsets[u], h.offsets[u + 1]
        assert (users[lo:hi] == u).all()
        assert (np.diff(h.ts[lo:hi]) >= 0).all()
    # items are indexed by id with a zero padding row
    assert ds.items["category_id"][0] == 0
    assert len(ds.items["duration"]) == ds.manifest.num_items + 1


def test_end_before_is_strict_and_matches_bruteforce(tiny_dataset_dir):
    h = load_dataset(tiny_dataset_dir).histories
    rng = np.random.default_rng(1)
    users = rng.integers(0, h.num_users, 500)
    ts = rng.integers(-5, 10_010, 500)
    ts[:100] = h.ts[rng.integers(0, len(h.ts), 100)]  # exact ties with real events
    end = h.end_before(users, ts)
    for u, t, e in zip(users, ts, end, strict=True):
        lo, hi = h.offsets[u], h.offsets[u + 1]
        assert e == lo + int((h.ts[lo:hi] < t).sum())


@pytest.mark.parametrize(
    ("mutate", "column", "match"),
    [
        (lambda it, ev: (it, ev.drop_columns(["ts"])), "ts", "missing"),
        (lambda it, ev: (it, ev.set_column(ev.schema.get_field_index("ts"), "ts",
                                           pc.cast(ev.column("ts"), pa.float64()))), "ts", "dtype int64"),
        (lambda it, ev: (it, ev.set_column(ev.schema.get_field_index("play_time"), "play_time",
                                           pc.multiply(ev.column("play_time"), pa.scalar(-1.0, pa.float32())))),
         "play_time", "non-negative"),
        (lambda it, ev: (it.set_column(0, "item_id", pa.array([1, 1, *range(3, it.num_rows + 1)],
                                                               pa.int64())), ev), "item_id", "unique"),
        (lambda it, ev: (it, ev.set_column(ev.schema.get_field_index("completion_ratio"), "completion_ratio",
                                           pa.array(np.full(ev.num_rows, np.nan, np.float32)))),
         "completion_ratio", "finite"),
        (lambda it, ev: (it, ev.set_column(ev.schema.get_field_index("item_id"), "item_id",
                                           pa.array(np.full(ev.num_rows, 999), pa.int64()))), "item_id", "ids in"),
        (lambda it, ev: (it, ev.set_column(ev.schema.get_field_index("user_id"), "user_id",
                                           pa.array(ev.column("user_id").to_numpy()[::-1]))), "user_id", "sorted"),
    ],
)
def test_write_dataset_rejects_bad_input_and_leaves_nothing(tmp_path, mutate, column, match):
    items, events = mutate(*tiny_tables())
    out = tmp_path / "ds"
    with pytest.raises(DataValidationError, match=match) as info:
        _write(out, items, events)
    assert column in str(info.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind either


def test_failed_rewrite_keeps_previous_output(tmp_path):
    out = make_tiny_dataset(tmp_path / "ds")
    before = (out / "manifest.json").read_text()
    items, events = tiny_tables(seed=5)
    with pytest.raises(DataValidationError):
        _write(out, items, events.drop_columns(["label"]))
    assert (out / "manifest.json").read_text() == before
    load_dataset(out)


def test_streaming_writer_equals_single_write(tmp_path):
    items, events = tiny_tables(seed=3)
    _write(tmp_path / "a", items, events)
    with DatasetWriter(tmp_path / "b", name="t", source="test", item_columns=ITEM_COLUMNS,
                       event_columns=EVENT_COLUMNS) as w:
        w.write_items(items)
        for start in range(0, events.num_rows, 123):
            w.write_events(events.slice(start, 123))
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    np.testing.assert_array_equal(a.histories.offsets, b.histories.offsets)
    np.testing.assert_array_equal(a.histories.ts, b.histories.ts)


def test_load_dataset_reports_corrupt_offsets(tmp_path):
    out = make_tiny_dataset(tmp_path / "ds")
    np.save(out / "user_offsets.npy", np.array([0, 1, 2]))
    with pytest.raises(DataValidationError, match=r"user_offsets\.npy"):
        load_dataset(out)


def test_manifest_missing_field_is_named(tmp_path):
    out = make_tiny_dataset(tmp_path / "ds")
    d = json.loads((out / "manifest.json").read_text())
    del d["num_items"]
    (out / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(DataValidationError, match="num_items"):
        Manifest.load(out)


def test_manifest_requires_contract_columns():
    cols = [c for c in EVENT_COLUMNS if c.name != "completion_ratio"]
    m = Manifest("x", "t", 1, 1, 1, 0, 1, ITEM_COLUMNS, cols)
    with pytest.raises(DataValidationError, match="completion_ratio"):
        m.check()
    with pytest.raises(ValueError, match="role"):
        ColumnSpec("x", "weird", "int64")


def test_manifest_fingerprint_tracks_schema_not_data(tmp_path):
    a = Manifest.load(make_tiny_dataset(tmp_path / "a", seed=1))
    b = Manifest.load(make_tiny_dataset(tmp_path / "b", seed=2))
    c = Manifest.load(make_tiny_dataset(tmp_path / "c", num_items=61))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()

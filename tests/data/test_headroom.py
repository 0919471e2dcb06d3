"""Life-cycle headroom: the vectorised distances against a pure-Python reference, buckets, window, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import EVENT_COLUMNS, ITEM_COLUMNS
from twinv2.data.headroom import life_cycle_headroom, previous_same_category_distance
from twinv2.data.schema import ColumnSpec, Manifest
from twinv2.data.split import TemporalSplit
from twinv2.data.store import Dataset, Histories, load_dataset
from twinv2.errors import ConfigError, DataValidationError


def _dataset(lengths: list[int], item_id: np.ndarray, ts: np.ndarray, label: np.ndarray,
             category: np.ndarray, item_columns: list[ColumnSpec] = ITEM_COLUMNS) -> Dataset:
    """An in-memory dataset: ``category`` int64 ``[I + 1]`` (row 0 padding), events in CSR order."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    hist = Histories(offsets=offsets, item_id=item_id.astype(np.int64), ts=ts.astype(np.int64),
                     label=label.astype(np.int8), cross={}, time_min=int(ts.min()) if len(ts) else 0)
    manifest = Manifest(name="h", source="test", num_users=len(lengths), num_items=len(category) - 1,
                        num_events=len(ts), time_min=int(ts.min()) if len(ts) else 0,
                        time_max=int(ts.max()) if len(ts) else 0, item_columns=item_columns,
                        event_columns=EVENT_COLUMNS)
    items = {"category_id": category.astype(np.int64), "duration": np.ones(len(category), np.float32)}
    return Dataset(path=Path("mem"), manifest=manifest, items=items, histories=hist)


def _reference_distances(ds: Dataset, start_ts: int, end_ts: int) -> list[int]:
    """Slow reference: walk each positive's history backwards, one behavior at a time."""
    h, cat = ds.histories, ds.items["category_id"]
    out = []
    for u in range(h.num_users):
        lo, hi = int(h.offsets[u]), int(h.offsets[u + 1])
        for r in range(lo, hi):
            if h.label[r] != 1 or not start_ts <= h.ts[r] < end_ts or cat[h.item_id[r]] == 0:
                continue
            earlier = [p for p in range(lo, hi) if h.ts[p] < h.ts[r]]  # strictly earlier timestamps
            dist = -1
            for back, p in enumerate(reversed(earlier), start=1):
                if cat[h.item_id[p]] == cat[h.item_id[r]]:
                    dist = back
                    break
            out.append(dist)
    return out


@st.composite
def _histories(draw):
    n_users = draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(0, 40), min_size=n_users, max_size=n_users))
    n_items = draw(st.integers(1, 12))
    n_cat = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    category = np.concatenate([[0], rng.integers(0, n_cat + 1, n_items)])  # some items of unknown category 0
    E = int(sum(lengths))
    ts = np.concatenate([np.sort(rng.integers(0, 30, n)) for n in lengths]) if E else np.zeros(0, np.int64)
    item_id = rng.integers(1, n_items + 1, E)
    label = rng.integers(0, 2, E)
    return lengths, item_id, ts, label, category


@settings(max_examples=150, deadline=None)
@given(_histories(), st.integers(1, 12), st.integers(0, 30), st.integers(1, 31))
def test_headroom_distances_match_the_python_reference(hist, long_len, start_ts, width):
    lengths, item_id, ts, label, category = hist
    if len(ts) == 0:
        return
    ds = _dataset(lengths, item_id, ts, label, category)
    end_ts = start_ts + width
    ref = np.array(_reference_distances(ds, start_ts, end_ts), dtype=np.int64)

    h = ds.histories
    rows = np.flatnonzero((h.label == 1) & (h.ts >= start_ts) & (h.ts < end_ts)
                          & (category[h.item_id] != 0))
    users = np.searchsorted(h.offsets, rows, side="right") - 1
    got = previous_same_category_distance(h.offsets, category[h.item_id], rows, h.end_before(users, h.ts[rows]))
    assert got.tolist() == ref.tolist()

    res = life_cycle_headroom(ds, start_ts, end_ts, long_len=long_len)
    found = ref > 0
    assert res["positives"] == len(ref)
    assert res["counts"] == {
        "within_50": int((found & (ref <= 50)).sum()),
        "within_L": int((found & (ref <= long_len)).sum()),
        "beyond_L": int((ref > long_len).sum()),
        "beyond_10L": int((ref > 10 * long_len).sum()),
        "never": int((~found).sum()),
    }
    c = res["counts"]
    assert c["within_L"] + c["beyond_L"] + c["never"] == res["positives"]


def test_headroom_hand_computed_toy():
    # One user, categories by item: 1 -> 1, 2 -> 2, 3 -> 1, 4 -> 0 (unknown).
    category = np.array([0, 1, 2, 1, 0])
    item_id = np.array([1, 2, 2, 2, 3, 1, 4, 2])
    ts = np.array([0, 1, 2, 3, 4, 4, 5, 6])
    label = np.array([1, 0, 0, 1, 1, 1, 1, 1])
    ds = _dataset([8], item_id, ts, label, category)
    res = life_cycle_headroom(ds, 0, 10, long_len=2)
    # Positives: row 0 (never), row 3 (cat 2, previous row 2: 1 back), row 4 (ts 4, cat 1: rows before
    # ts 4 are 0..3, previous cat 1 is row 0: 4 back), row 5 (ts 4 tie: same history, 4 back),
    # row 6 (cat 0: left out), row 7 (cat 2, history rows 0..6, previous cat 2 is row 3: 4 back).
    assert res["positives"] == 5 and res["unknown_category"] == 1
    assert res["counts"] == {"within_50": 4, "within_L": 1, "beyond_L": 3, "beyond_10L": 0, "never": 1}
    assert res["shares"]["beyond_L"] == pytest.approx(3 / 5)
    assert res["median_distance"] == 4.0
    assert res["category"] == "category_id" and res["window"]["source"] == "given"
    # Called directly, a target of the unknown category 0 matches nothing, not even another unknown.
    h = ds.histories
    got = previous_same_category_distance(h.offsets, category[h.item_id], np.array([6, 7]), np.array([6, 7]))
    assert got.tolist() == [-1, 4]
    unknown = previous_same_category_distance(np.array([0, 2]), np.array([0, 0]), np.array([1]), np.array([1]))
    assert unknown.tolist() == [-1]


def test_headroom_other_users_never_count():
    # User 0 saw category 1; user 1's click on category 1 has no history of its own.
    category = np.array([0, 1])
    ds = _dataset([2, 1], np.array([1, 1, 1]), np.array([0, 1, 2]), np.array([0, 0, 1]), category)
    res = life_cycle_headroom(ds, 0, 10)
    assert res["counts"]["never"] == 1 and res["positives"] == 1


def test_headroom_default_window_is_the_default_test_window(tiny_dataset_dir):
    ds = load_dataset(tiny_dataset_dir)
    res = life_cycle_headroom(ds)
    lo, hi = TemporalSplit.from_fractions(ds.histories.ts).window("test")
    assert (res["window"]["start_ts"], res["window"]["end_ts"]) == (lo, hi)
    assert res["window"]["source"].startswith("test window")
    h = ds.histories
    assert res["positives"] == int(((h.label == 1) & (h.ts >= lo) & (h.ts < hi)).sum())
    assert sum(v for k, v in res["shares"].items() if k in ("within_L", "beyond_L", "never")) == pytest.approx(1)


def test_headroom_empty_window_has_no_shares():
    ds = _dataset([3], np.array([1, 1, 1]), np.array([0, 1, 2]), np.array([1, 1, 1]), np.array([0, 1]))
    res = life_cycle_headroom(ds, 100, 200)
    assert res["positives"] == 0 and res["shares"]["beyond_L"] is None and res["median_distance"] is None


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"long_len": 0}, "long_len=0"),
    ({"long_len": -5}, "long_len=-5"),
    ({"start_ts": 5}, "both start_ts and end_ts"),
    ({"start_ts": 5, "end_ts": 5}, "start_ts=5 should be < end_ts=5"),
    ({"category": "author_id"}, "category='author_id'"),
])
def test_headroom_rejects_bad_arguments(kwargs, match):
    ds = _dataset([3], np.array([1, 1, 1]), np.array([0, 1, 2]), np.array([1, 1, 1]), np.array([0, 1]))
    with pytest.raises(ConfigError, match=match):
        life_cycle_headroom(ds, **kwargs)


def test_headroom_without_categorical_column_is_a_typed_error():
    cols = [c for c in ITEM_COLUMNS if c.role != "inherent_categorical"]
    ds = _dataset([3], np.array([1, 1, 1]), np.array([0, 1, 2]), np.array([1, 1, 1]), np.array([0, 1]),
                  item_columns=cols)
    with pytest.raises(DataValidationError, match="inherent categorical"):
        life_cycle_headroom(ds)


def test_describe_reports_headroom_in_json_and_table(tiny_dataset_dir):
    from typer.testing import CliRunner

    from twinv2.cli import app

    ds = load_dataset(tiny_dataset_dir)
    lo, hi = int(ds.histories.ts.min()), int(ds.histories.ts.max()) + 1
    result = CliRunner().invoke(app, ["data", "describe", str(tiny_dataset_dir), "--json", "--headroom-len", "7",
                                      "--headroom-start", str(lo), "--headroom-end", str(hi)])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)["headroom"]
    assert got == life_cycle_headroom(ds, lo, hi, long_len=7)
    assert got["long_len"] == 7 and got["window"] == {"start_ts": lo, "end_ts": hi, "source": "given"}

    table = CliRunner().invoke(app, ["data", "describe", str(tiny_dataset_dir)])
    assert table.exit_code == 0, table.output
    default = life_cycle_headroom(ds)
    assert "life-cycle headroom" in table.stdout
    assert f"{100 * default['shares']['beyond_L']:.1f}%" in table.stdout


@pytest.mark.parametrize(("args", "match"), [
    (["--headroom-start", "5"], "give both or neither"),
    (["--headroom-len", "0"], "--headroom-len"),
    (["--headroom-category", "nope"], "category='nope'"),
])
def test_describe_headroom_options_fail_cleanly(tiny_dataset_dir, args, match):
    from typer.testing import CliRunner

    from twinv2.cli import app

    result = CliRunner().invoke(app, ["data", "describe", str(tiny_dataset_dir), *args])
    assert result.exit_code == 2
    assert match in result.output and "Traceback" not in result.output


def test_bucket_of_distance_bounds():
    from twinv2.data.headroom import SAMPLE_BUCKETS, bucket_of_distance

    d = np.array([-1, 1, 50, 51, 500, 501, 10_000])
    assert [SAMPLE_BUCKETS[b] for b in bucket_of_distance(d, 500)] == [
        "never", "within_50", "within_50", "within_L", "within_L", "beyond_L", "beyond_L"]
    # L <= 50: within_L is empty and beyond_L starts right after L.
    assert [SAMPLE_BUCKETS[b] for b in bucket_of_distance(np.array([3, 4, 60]), 3)] == [
        "within_50", "beyond_L", "beyond_L"]


def test_sample_headroom_buckets_on_a_hand_built_history():
    from twinv2.data.headroom import SAMPLE_BUCKETS, sample_headroom_buckets
    from twinv2.data.split import Samples

    # One user, 8 behaviors; items 1, 3 -> category 1, item 2 -> 2, item 4 -> unknown 0.
    category = np.array([0, 1, 2, 1, 0])
    item_id = np.array([1, 2, 2, 2, 3, 1, 4, 2])
    ts = np.array([0, 1, 2, 3, 4, 4, 5, 6])
    label = np.array([1, 0, 0, 0, 0, 1, 1, 0])  # clicked or not, every sample gets a bucket
    ds = _dataset([8], item_id, ts, label, category)
    rows = np.arange(8)
    samples = Samples(user_id=np.zeros(8, np.int64), ts=ts, item_id=item_id, label=label.astype(np.int8),
                      event_row=rows)
    got = sample_headroom_buckets(ds, samples, long_len=2)
    # Row 0: no history -> never; row 1 (cat 2): none before -> never; row 2 (cat 2): row 1, 1 back;
    # row 3: row 2, 1 back; row 4 (ts 4, cat 1): history rows 0..3, row 0 is 4 back; row 5 (same ts 4,
    # cat 1): same history, 4 back; row 6 (cat 0): never; row 7 (cat 2): rows 0..6, row 3 is 4 back.
    assert got.distance.tolist() == [-1, -1, 1, 1, 4, 4, -1, 4]
    assert [SAMPLE_BUCKETS[b] for b in got.bucket] == [
        "never", "never", "within_50", "within_50", "beyond_L", "beyond_L", "never", "beyond_L"]
    assert got.category == "category_id" and got.long_len == 2
    wide = sample_headroom_buckets(ds, samples, long_len=60)
    assert [SAMPLE_BUCKETS[b] for b in wide.bucket][4:6] == ["within_50", "within_50"]
    with pytest.raises(ConfigError, match="long_len=0"):
        sample_headroom_buckets(ds, samples, long_len=0)

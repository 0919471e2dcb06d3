"""Temporal split and samples."""

from __future__ import annotations

import numpy as np
import pytest

from twinv2.data.split import TemporalSplit, make_samples
from twinv2.data.store import load_dataset
from twinv2.errors import ConfigError, DataValidationError


def test_split_windows_partition_post_snapshot_events(tiny_dataset_dir):
    ds = load_dataset(tiny_dataset_dir)
    split = TemporalSplit.from_fractions(ds.histories.ts)
    counts = {name: len(make_samples(ds, split, name)) for name in ("train", "valid", "test")}
    after = int((ds.histories.ts >= split.snapshot_ts).sum())
    assert sum(counts.values()) == after
    for name in ("train", "valid", "test"):
        lo, hi = split.window(name)
        s = make_samples(ds, split, name)
        assert ((s.ts >= lo) & (s.ts < hi)).all()
        np.testing.assert_array_equal(ds.histories.item_id[s.event_row], s.item_id)


def test_make_samples_subsample_is_seeded_and_sorted(tiny_dataset_dir):
    ds = load_dataset(tiny_dataset_dir)
    split = TemporalSplit.from_fractions(ds.histories.ts, snapshot=0.5)
    a = make_samples(ds, split, "train", max_samples=50, seed=3)
    b = make_samples(ds, split, "train", max_samples=50, seed=3)
    c = make_samples(ds, split, "train", max_samples=50, seed=4)
    assert len(a) == 50
    np.testing.assert_array_equal(a.event_row, b.event_row)
    assert not np.array_equal(a.event_row, c.event_row)
    assert (np.diff(a.event_row) > 0).all()


def test_split_rejects_bad_boundaries_and_empty_windows(tiny_dataset_dir):
    with pytest.raises(ConfigError, match="snapshot_ts < valid_start_ts"):
        TemporalSplit(10, 5, 20, 30)
    with pytest.raises(ConfigError, match="fractions"):
        TemporalSplit.from_fractions(np.arange(10), snapshot=0.9, valid=0.5)
    ds = load_dataset(tiny_dataset_dir)
    far = TemporalSplit(10**9, 10**9 + 1, 10**9 + 2, 10**9 + 3)
    with pytest.raises(DataValidationError, match="train window"):
        make_samples(ds, far, "train")
    with pytest.raises(ConfigError, match="unknown split"):
        far.window("holdout")

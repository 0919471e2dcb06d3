"""Batches: sequences are sliced at batch time, most recent first, and never leak the future."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twinv2.data.batches import BatchBuilder, SequenceConfig, sequence_feature_names
from twinv2.data.split import TemporalSplit, make_samples
from twinv2.data.store import load_dataset
from twinv2.errors import ConfigError, DataValidationError


@pytest.fixture(scope="module")
def dataset(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir)


def _fake_compressed(ds, snapshot_ts, seed=0):
    """Clusters of consecutive pre-snapshot behaviors (size <= 3) with exact member means."""
    h = ds.histories
    rng = np.random.default_rng(seed)
    offsets, rep, size, first, last, mean_ts = [0], [], [], [], [], []
    means = {n: [] for n in ("play_time", "completion_ratio", "label")}
    for u in range(h.num_users):
        lo = h.offsets[u]
        hi = int(h.end_before(np.array([u]), np.array([snapshot_ts]))[0])
        start = lo
        while start < hi:
            stop = min(hi, start + int(rng.integers(1, 4)))
            rows = np.arange(start, stop)
            rep.append(h.item_id[rows[0]])
            size.append(len(rows))
            first.append(h.ts[rows].min())
            last.append(h.ts[rows].max())
            mean_ts.append(h.ts[rows].mean())
            for n in ("play_time", "completion_ratio"):
                means[n].append(h.cross[n][rows].mean())
            means["label"].append(h.label[rows].mean())
            start = stop
        offsets.append(len(rep))
    return SimpleNamespace(
        offsets=np.array(offsets), rep_item_id=np.array(rep, np.int64), cluster_size=np.array(size, np.int64),
        first_ts=np.array(first), last_ts=np.array(last), mean_ts=np.array(mean_ts, np.float64),
        means={k: np.array(v, np.float32) for k, v in means.items()}, snapshot_ts=snapshot_ts,
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(long_len=st.integers(1, 400), short_len=st.integers(1, 60), seed=st.integers(0, 10_000))
def test_no_sequence_holds_a_behavior_at_or_after_the_sample_time(dataset, long_len, short_len, seed):
    """The leakage test: for every sample at time t, every sequence item comes from a behavior with ts < t."""
    h = dataset.histories
    split = TemporalSplit.from_fractions(h.ts, snapshot=0.3, valid=0.6, test=0.8)
    samples = make_samples(dataset, split, "train", max_samples=64, seed=seed)
    builder = BatchBuilder(dataset, SequenceConfig(long_len=long_len, short_len=short_len))
    batch = builder.build(samples)
    gap_channel = sequence_feature_names(dataset.manifest).index("time_gap")
    for seq in (batch.long, batch.short):
        mask = seq.mask.numpy()
        gaps = seq.cross[..., gap_channel].numpy()
        assert (gaps[mask] > 0).all()  # time_gap = t - ts_behavior > 0  <=>  ts_behavior < t
    # and each row holds exactly the most recent min(n_before, L) behaviors, most recent first
    for b in range(len(samples)):
        u, t = samples.user_id[b], samples.ts[b]
        lo, hi = h.offsets[u], h.offsets[u + 1]
        before = np.flatnonzero(h.ts[lo:hi] < t) + lo
        expected = h.item_id[before[::-1][:long_len]]
        got = batch.long.item_id[b][batch.long.mask[b]].numpy()
        np.testing.assert_array_equal(got, expected)
        assert batch.history_length[b] == len(before)


def test_compressed_sequence_mixes_recent_raw_then_clusters_without_leakage(dataset):
    h = dataset.histories
    split = TemporalSplit.from_fractions(h.ts, snapshot=0.5, valid=0.7, test=0.85)
    compressed = _fake_compressed(dataset, split.snapshot_ts)
    samples = make_samples(dataset, split, "valid", max_samples=80, seed=0)
    L = 40
    batch = BatchBuilder(dataset, SequenceConfig(long_len=L, long_source="compressed"), compressed).build(samples)
    names = sequence_feature_names(dataset.manifest)
    for b in range(len(samples)):
        u, t = samples.user_id[b], samples.ts[b]
        lo, hi = h.offsets[u], h.offsets[u + 1]
        raw = np.flatnonzero((h.ts[lo:hi] < t) & (h.ts[lo:hi] >= split.snapshot_ts))[::-1][:L] + lo
        clusters = np.arange(compressed.offsets[u], compressed.offsets[u + 1])[::-1][: L - len(raw)]
        mask = batch.long.mask[b].numpy()
        assert mask.sum() == len(raw) + len(clusters)
        np.testing.assert_array_equal(batch.long.item_id[b].numpy()[: len(raw)], h.item_id[raw])
        np.testing.assert_array_equal(batch.long.item_id[b].numpy()[len(raw): mask.sum()],
                                      compressed.rep_item_id[clusters])
        sizes = batch.long.size[b].numpy()[mask]
        assert (sizes[: len(raw)] == 1).all()
        np.testing.assert_array_equal(sizes[len(raw):], compressed.cluster_size[clusters])
        gaps = batch.long.cross[b, :, names.index("time_gap")].numpy()[mask]
        assert (gaps > 0).all()
        assert (compressed.last_ts[clusters] < t).all()


def test_compressed_source_refuses_samples_before_the_snapshot(dataset):
    h = dataset.histories
    split = TemporalSplit.from_fractions(h.ts, snapshot=0.5, valid=0.7, test=0.85)
    compressed = _fake_compressed(dataset, split.valid_start_ts)
    samples = make_samples(dataset, split, "train")
    builder = BatchBuilder(dataset, SequenceConfig(long_source="compressed"), compressed)
    with pytest.raises(DataValidationError, match="snapshot"):
        builder.build(samples)


def test_batches_cover_every_sample_once_and_shuffle_is_seeded(dataset):
    split = TemporalSplit.from_fractions(dataset.histories.ts)
    samples = make_samples(dataset, split, "train")
    builder = BatchBuilder(dataset, SequenceConfig(long_len=10, short_len=5))
    seen = np.concatenate([b.target_item.numpy() for b in builder.batches(samples, 7, shuffle=True, seed=1)])
    assert sorted(seen.tolist()) == sorted(samples.item_id.tolist())
    again = np.concatenate([b.target_item.numpy() for b in builder.batches(samples, 7, shuffle=True, seed=1)])
    np.testing.assert_array_equal(seen, again)


def test_sequence_config_validates():
    with pytest.raises(ConfigError, match="long_source"):
        SequenceConfig(long_source="clusters")
    with pytest.raises(ConfigError, match=">= 1"):
        SequenceConfig(long_len=0)

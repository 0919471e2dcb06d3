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


@pytest.mark.parametrize("raw_cap", [0, 3, 10])
def test_compressed_sequence_caps_the_raw_part_and_fills_with_clusters(dataset, raw_cap):
    """With raw_cap c the sequence is the c most recent raw behaviors since the snapshot, then clusters."""
    h = dataset.histories
    split = TemporalSplit.from_fractions(h.ts, snapshot=0.5, valid=0.7, test=0.85)
    compressed = _fake_compressed(dataset, split.snapshot_ts)
    samples = make_samples(dataset, split, "valid", max_samples=60, seed=1)
    L = 30
    cfg = SequenceConfig(long_len=L, long_source="compressed", raw_cap=raw_cap)
    batch = BatchBuilder(dataset, cfg, compressed).build(samples)
    for b in range(len(samples)):
        u, t = samples.user_id[b], samples.ts[b]
        lo, hi = h.offsets[u], h.offsets[u + 1]
        raw = np.flatnonzero((h.ts[lo:hi] < t) & (h.ts[lo:hi] >= split.snapshot_ts))[::-1][:raw_cap] + lo
        clusters = np.arange(compressed.offsets[u], compressed.offsets[u + 1])[::-1][: L - len(raw)]
        mask = batch.long.mask[b].numpy()
        virtual = batch.long.virtual[b].numpy()
        assert mask.sum() == len(raw) + len(clusters)
        np.testing.assert_array_equal(batch.long.item_id[b].numpy()[: len(raw)], h.item_id[raw])
        np.testing.assert_array_equal(batch.long.item_id[b].numpy()[len(raw): mask.sum()],
                                      compressed.rep_item_id[clusters])
        assert not virtual[: len(raw)].any() and virtual[len(raw): mask.sum()].all() and not virtual[~mask].any()


def test_compressed_versions_each_sample_reads_the_latest_built_before_it(dataset):
    """The offline job on a cadence: a sample reads the version with the latest snapshot <= its time, and
    no cluster of it holds a behavior at or after the sample time."""
    h = dataset.histories
    split = TemporalSplit.from_fractions(h.ts, snapshot=0.4, valid=0.7, test=0.85)
    middle = int(np.quantile(h.ts, 0.55))
    early, late = _fake_compressed(dataset, split.snapshot_ts, seed=0), _fake_compressed(dataset, middle, seed=1)
    samples = make_samples(dataset, split, "train", max_samples=120, seed=2)
    L = 25
    cfg = SequenceConfig(long_len=L, long_source="compressed", raw_cap=5)
    batch = BatchBuilder(dataset, cfg, [late, early]).build(samples)  # any order
    for b in range(len(samples)):
        u, t = samples.user_id[b], samples.ts[b]
        version = late if t >= middle else early
        lo, hi = h.offsets[u], h.offsets[u + 1]
        raw = np.flatnonzero((h.ts[lo:hi] < t) & (h.ts[lo:hi] >= version.snapshot_ts))[::-1][:5] + lo
        clusters = np.arange(version.offsets[u], version.offsets[u + 1])[::-1][: L - len(raw)]
        n = len(raw) + len(clusters)
        assert batch.long.mask[b].sum() == n
        np.testing.assert_array_equal(batch.long.item_id[b].numpy()[len(raw): n], version.rep_item_id[clusters])
        np.testing.assert_array_equal(batch.long.size[b].numpy()[len(raw): n], version.cluster_size[clusters])
        assert (version.last_ts[clusters] < t).all()


def test_compressed_versions_refuse_duplicate_snapshots(dataset):
    split = TemporalSplit.from_fractions(dataset.histories.ts, snapshot=0.5, valid=0.7, test=0.85)
    c = _fake_compressed(dataset, split.snapshot_ts)
    with pytest.raises(ConfigError, match="share a snapshot"):
        BatchBuilder(dataset, SequenceConfig(long_source="compressed"), [c, c])


def test_sequence_config_rejects_a_negative_raw_cap():
    with pytest.raises(ConfigError, match="raw_cap"):
        SequenceConfig(raw_cap=-1)

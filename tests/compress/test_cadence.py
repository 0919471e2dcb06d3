"""The offline job on a cadence: evenly spaced snapshots, one resumable version per snapshot, and a batch
builder that gives every sample the latest version built before it."""

from __future__ import annotations

import numpy as np
import pytest

from twinv2.compress import ClusterConfig, load_compressed
from twinv2.compress.cadence import cadence_snapshots, compress_on_cadence, version_folder
from twinv2.data.batches import BatchBuilder, SequenceConfig
from twinv2.data.split import TemporalSplit, make_samples
from twinv2.data.store import load_dataset
from twinv2.errors import ConfigError


def test_cadence_snapshots_are_evenly_spaced_event_quantiles():
    ts = np.arange(1000, dtype=np.int64) * 10
    snaps = cadence_snapshots(ts, 0.8, 1.0, 4)
    assert snaps == [7990, 8490, 8990, 9490]  # the "lower" quantile, as TemporalSplit places its snapshot
    assert snaps[0] == TemporalSplit.from_fractions(ts, snapshot=0.8).snapshot_ts
    assert cadence_snapshots(np.zeros(50, np.int64), 0.5, 1.0, 3) == [0]  # ties collapse to one version


@pytest.mark.parametrize(("start", "stop", "versions", "match"), [
    (0.9, 0.8, 2, "fractions"), (-0.1, 0.5, 2, "fractions"), (0.2, 0.5, 0, "versions")])
def test_cadence_snapshots_validate(start, stop, versions, match):
    with pytest.raises(ConfigError, match=match):
        cadence_snapshots(np.arange(10, dtype=np.int64), start, stop, versions)


def test_compress_on_cadence_writes_one_version_per_snapshot_and_serves_each_sample_the_latest(
        tiny_dataset_dir, tmp_path):
    ds = load_dataset(tiny_dataset_dir)
    h = ds.histories
    split = TemporalSplit.from_fractions(h.ts, snapshot=0.5, valid=0.7, test=0.85)
    snaps = cadence_snapshots(h.ts, 0.5, 0.85, 3)
    assert snaps[0] == split.snapshot_ts and len(snaps) == 3
    kwargs = dict(config=ClusterConfig(gamma=4), workers=1, progress=False)
    folders = compress_on_cadence(tiny_dataset_dir, tmp_path / "c", snaps, **kwargs)
    assert folders == [version_folder(tmp_path / "c", s) for s in snaps]
    versions = [load_compressed(f) for f in folders]
    assert [v.snapshot_ts for v in versions] == snaps
    # a rerun finds every version finished and changes nothing
    stamps = [(f / "manifest.json").stat().st_mtime_ns for f in folders]
    compress_on_cadence(tiny_dataset_dir, tmp_path / "c", snaps, **kwargs)
    assert [(f / "manifest.json").stat().st_mtime_ns for f in folders] == stamps
    # every sample of the train and valid windows reads the latest version built before it
    samples = make_samples(ds, split, "valid", max_samples=100, seed=0)
    builder = BatchBuilder(ds, SequenceConfig(long_len=30, long_source="compressed", raw_cap=4), versions)
    batch = builder.build(samples)
    for b in range(len(samples)):
        u, t = samples.user_id[b], samples.ts[b]
        v = versions[int(np.searchsorted(snaps, t, side="right")) - 1]
        n_clusters = int(v.offsets[u + 1] - v.offsets[u])
        raw = int(((h.ts[h.offsets[u]:h.offsets[u + 1]] >= v.snapshot_ts)
                   & (h.ts[h.offsets[u]:h.offsets[u + 1]] < t)).sum())
        assert int(batch.long.virtual[b].sum()) == min(n_clusters, 30 - min(raw, 4))

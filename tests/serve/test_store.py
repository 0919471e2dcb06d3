"""The life-cycle store contract, for both backends: atomic version swaps, idempotent durable appends,
snapshot refusals, folding that keeps every behavior counted, size reports."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serve.serve_testing import SNAPSHOT_TS
from twinv2.checkpoints import load_model
from twinv2.compress import load_compressed
from twinv2.serve.backends import open_store
from twinv2.serve.loader import compression_version, load_version
from twinv2.serve.state import decode_arrays, encode_arrays
from twinv2.serve.store import Event, EventRejectedError, Folder, VersionInfo, context_length, make_folder

CROSS = ["play_time", "completion_ratio"]


def _event(user: int, n: int, ts: int) -> Event:
    return Event(user_id=user, event_id=f"e{n}", item_id=1 + n % 60, ts=ts, label=n % 2,
                 cross={"play_time": float(n), "completion_ratio": (n % 10) / 10})


@pytest.fixture
def loaded(serve_data, store_url):
    _, info = load_model(serve_data["twinv2"])
    store = open_store(store_url, CROSS, context_length(info.sequence_config))
    version = load_version(store, serve_data["compressed"])
    yield store, version, info
    store.close()


def _folder(serve_data, info, cap: int) -> Folder:
    from twinv2.compress.store import read_compressed_manifest

    comp = serve_data["compressed"]
    numerics = {c.name: np.asarray(info.items[c.name], np.float32) for c in info.manifest.item_numerics}
    return make_folder(read_compressed_manifest(comp), np.load(comp / "item_embeddings.npy"), numerics, CROSS, cap,
                       context_length(info.sequence_config))


def test_arrays_codec_round_trips_dtypes_and_shapes():
    arrays = {"a": np.arange(5, dtype=np.int64), "b": np.ones((3, 4), np.float32), "c": np.zeros(0, np.int8)}
    out = decode_arrays(encode_arrays(arrays))
    assert list(out) == list(arrays)
    for k, v in arrays.items():
        assert out[k].dtype == v.dtype and np.array_equal(out[k], v)


def test_store_load_holds_each_users_clusters_and_recent_behaviors(loaded, serve_data):
    store, version, info = loaded
    comp = load_compressed(serve_data["compressed"])
    assert version.version == compression_version(serve_data["compressed"]) and version.snapshot_ts == SNAPSHOT_TS
    assert store.size().users == int((np.diff(comp.offsets) > 0).sum())
    assert store.size().clusters == comp.num_clusters
    for user in (0, 5):
        state = store.get_user(user)
        a, b = comp.offsets[user], comp.offsets[user + 1]
        assert np.array_equal(state.clusters["rep_item_id"], comp.rep_item_id[a:b])
        before = int((state.events.ts < SNAPSHOT_TS).sum())
        assert before <= context_length(info.sequence_config)
        assert bool(np.all(np.diff(state.events.ts) >= 0))  # oldest first


def test_store_swaps_versions_atomically(loaded):
    store, version, _ = loaded
    state = store.get_user(1)
    staged = dict(state.clusters)
    staged["cluster_size"] = staged["cluster_size"] * 0 + 7
    store.put_users("v-next", [(1, SNAPSHOT_TS + 5, staged, np.zeros((len(staged["cluster_size"]), 4), np.float32))])
    assert store.get_user(1).snapshot_ts == SNAPSHOT_TS  # staged, not served
    assert store.active_version().version == version.version
    store.activate(VersionInfo("v-next", SNAPSHOT_TS + 5))
    now = store.get_user(1)
    assert now.snapshot_ts == SNAPSHOT_TS + 5 and set(now.clusters["cluster_size"].tolist()) == {7}
    assert store.get_user(2).num_clusters == 0  # the old version is gone, not mixed in
    assert store.size().users == 1


def test_store_append_is_idempotent_and_refuses_events_before_the_snapshot(loaded, serve_data):
    store, _, info = loaded
    folder = _folder(serve_data, info, cap=10_000)
    first = store.append_events([_event(1, 0, 9_000), _event(1, 1, 9_001), _event(9_999, 0, 9_002)], folder)
    again = store.append_events([_event(1, 1, 9_001), _event(1, 0, 9_000)], folder)
    assert (first.accepted, first.duplicates, again.accepted, again.duplicates) == (3, 0, 0, 2)
    assert store.get_user(9_999).events.ts.tolist() == [9_002] and store.get_user(9_999).known
    with pytest.raises(EventRejectedError, match=r"events\[1\]\.ts"):
        store.append_events([_event(1, 2, 9_003), _event(1, 3, SNAPSHOT_TS - 1)], folder)
    assert 9_003 not in store.get_user(1).events.ts.tolist()  # the refused call stored nothing
    # A retry stays a no-op after a fold has moved the snapshot past the event.
    store.append_events([_event(1, 50 + n, 20_000 + n) for n in range(400)], _folder(serve_data, info, cap=8))
    assert store.get_user(1).snapshot_ts > 9_000
    retry = store.append_events([_event(1, 0, 9_000)], folder)
    assert (retry.accepted, retry.duplicates) == (0, 1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=8), min_size=1, max_size=8),
       cap=st.integers(2, 12))
def test_store_fold_keeps_every_behavior_counted(serve_data, tmp_path_factory, batches, cap):
    """Members of the clusters plus raw behaviors since the snapshot = before + distinct new events."""
    _, info = load_model(serve_data["twinv2"])
    store = open_store(f"sqlite://{tmp_path_factory.mktemp('fold') / 's.db'}", CROSS,
                       context_length(info.sequence_config))
    load_version(store, serve_data["compressed"])
    folder = _folder(serve_data, info, cap)
    user = 4

    def total(state):
        return int(state.clusters["cluster_size"].sum()) + int((state.events.ts >= state.snapshot_ts).sum())

    start = total(store.get_user(user))
    times: dict[int, int] = {}  # event id -> its time: new ids arrive in time order, retries repeat theirs
    for batch in batches:
        for n in batch:
            times.setdefault(n, 20_000 + len(times))
        store.append_events([_event(user, n, times[n]) for n in batch], folder)
        state = store.get_user(user)
        assert state.snapshot_ts >= SNAPSHOT_TS
    state = store.get_user(user)
    assert total(state) == start + len(times)
    assert folder.count(state) <= cap  # folded down below the cap
    assert bool(np.all(np.diff(state.clusters["last_ts"]) >= 0))  # most recent last, like the job writes
    store.close()


def test_load_version_of_a_folder_of_snapshots_takes_the_latest(serve_data, store_url, tmp_path):
    """The demo writes compressed/snapshot-<ts>/ folders (the offline job on a cadence)."""
    import shutil

    from twinv2.serve.loader import latest_compressed

    root = tmp_path / "compressed"
    shutil.copytree(serve_data["compressed"], root / "snapshot-6000")
    (root / "unfinished").mkdir()
    assert latest_compressed(root) == root / "snapshot-6000"
    assert latest_compressed(serve_data["compressed"]) == serve_data["compressed"]
    store = open_store(store_url, CROSS, 10)
    assert load_version(store, root).version == compression_version(serve_data["compressed"])
    store.close()

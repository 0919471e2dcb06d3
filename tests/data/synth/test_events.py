"""One user's events: determinism per (seed, user), ordering with ties, play time, clicks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq

from tests.data.synth.conftest import TINY, events_of
from twinv2.data.store import load_dataset
from twinv2.data.synth import GROUND_TRUTH_FILES, activity_counts, build_items, generate_user


def test_generate_user_depends_only_on_seed_and_user_id():
    items = build_items(TINY, 5)
    a, truth_a = generate_user(items, TINY, 5, 17, 400)
    b, truth_b = generate_user(items, dataclasses.replace(TINY, num_users=9999), 5, 17, 400)
    c, _ = generate_user(items, TINY, 5, 18, 400)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert np.array_equal(truth_a.vec_a, truth_b.vec_a)
    assert not np.array_equal(a["item_id"], c["item_id"])
    # Counts of a prefix of users do not change when more users are generated (the pinned user aside).
    few, many = activity_counts(TINY, 5), activity_counts(dataclasses.replace(TINY, num_users=400), 5)
    keep = np.arange(len(few)) != np.argmax(few)
    assert np.array_equal(few[keep], many[: len(few)][keep])


def test_synthesize_events_sorted_by_user_then_time_with_ties(tiny_dir):
    e = events_of(tiny_dir)
    users, ts = e["user_id"], e["ts"]
    assert (np.diff(users) >= 0).all()
    same_user = np.diff(users) == 0
    assert (np.diff(ts)[same_user] >= 0).all()
    ties = (np.diff(ts) == 0) & same_user
    assert 0.02 < ties.mean() < 0.6  # pages share a request timestamp: ties occur, but not everywhere
    assert ts.min() >= TINY.start_ts


def test_synthesize_completion_ratio_is_clipped_play_over_duration(tiny_dir):
    ds = load_dataset(tiny_dir)
    h = ds.histories
    play, completion = h.cross["play_time"], h.cross["completion_ratio"]
    duration = ds.items["duration"][h.item_id]
    assert play.dtype == completion.dtype == np.float32
    assert np.array_equal(completion, np.clip(play / duration, 0, 1).astype(np.float32))
    assert (play[h.label == 0] == 0).all() and (play[h.label == 1] > 0).all()
    assert (play > duration).any() and (completion == 1).any()  # replays exist and are clipped
    assert 0.2 < np.median(completion[h.label == 1]) < 0.95


def test_clicks_follow_affinity_to_current_interests(tiny_dir):
    ds = load_dataset(tiny_dir)
    h, category = ds.histories, ds.items["category_id"]
    interests = pq.read_table(tiny_dir / GROUND_TRUTH_FILES["interests"]).to_pandas()
    liked, unrelated = [], []
    for user, rows in interests.groupby("user_id"):
        lo, hi = h.offsets[user], h.offsets[user + 1]
        cats = category[h.item_id[lo:hi]]
        stable = np.isin(cats, rows.category_id[rows.kind == "stable"].to_numpy())
        any_interest = np.isin(cats, np.concatenate([rows.category_id, rows.target_category_id]))
        liked.append(h.label[lo:hi][stable])
        unrelated.append(h.label[lo:hi][~any_interest])
    assert np.concatenate(liked).mean() > 2 * np.concatenate(unrelated).mean()

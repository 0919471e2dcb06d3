"""Users: heavy-tailed activity counts and the dynamics of dormant and drifting interests."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.data.synth.conftest import TINY
from twinv2.data.store import load_dataset
from twinv2.data.synth import GROUND_TRUTH_FILES, SCALES, activity_counts, config_for_scale, dormant_active, synthesize


def test_activity_counts_heavy_tailed_at_every_scale():
    for scale, must_reach in (("small", 3000), ("default", 10_000), ("large", 100_000)):
        n = activity_counts(SCALES[scale], 0)
        assert 100 <= np.median(n) <= 400, scale  # most users: hundreds of events
        assert n.max() >= must_reach, scale
        assert n.max() / np.median(n) > 10, scale
    default = activity_counts(SCALES["default"], 0)
    assert (default >= 10_000).sum() >= 3  # several ultra-long users, not just the pinned one
    assert 1.5e6 <= default.sum() <= 3e6  # keeps the default dataset trainable on a laptop


@pytest.mark.parametrize("max_events", [150, 5000])
def test_max_events_caps_every_user_and_pins_the_heaviest(max_events):
    cfg = config_for_scale("small", users=50, max_events=max_events)
    n = activity_counts(cfg, 1)
    assert n.max() == max_events and (n == max_events).sum() >= 1
    assert (n <= max_events).all() and (n >= cfg.min_events).all()


def test_dormant_interests_resurface_only_in_their_windows(tmp_path):
    # Many dormant interests with short periods, so each long-lived user sees several windows.
    cfg = dataclasses.replace(TINY, num_users=30, p_dormant=0.6, p_drifting=0.1, dormant_annual_prob=0.0,
                              dormant_period_days_min=90, dormant_period_days_max=150, events_median=400,
                              min_span_frac=0.9)
    synthesize(tmp_path / "d", config=cfg, seed=11, progress=False)
    ds = load_dataset(tmp_path / "d")
    h, category = ds.histories, ds.items["category_id"]
    interests = pq.read_table(tmp_path / "d" / GROUND_TRUTH_FILES["interests"]).to_pandas()
    dormant = interests[interests.kind == "dormant"]
    assert len(dormant) >= 10
    inside = outside = inside_events = outside_events = 0
    resurfaced = 0
    for row in dormant.itertuples():
        lo, hi = h.offsets[row.user_id], h.offsets[row.user_id + 1]
        ts, clicked = h.ts[lo:hi], h.label[lo:hi] == 1
        in_cat = category[h.item_id[lo:hi]] == row.category_id
        active = dormant_active(np.float64(row.period_days), np.float64(row.phase_days),
                                np.float64(row.window_days), ts, cfg.start_ts)
        inside += int((clicked & in_cat & active).sum())
        outside += int((clicked & in_cat & ~active).sum())
        inside_events += int(active.sum())
        outside_events += int((~active).sum())
        # Resurfacing: clicks in two different windows separated by a dormant gap of months.
        days = (ts[clicked & in_cat & active] - cfg.start_ts) / 86_400
        cycles = np.unique(np.floor((days - row.phase_days) / row.period_days))
        if len(cycles) >= 2:
            resurfaced += 1
    assert inside / inside_events > 8 * (outside / outside_events)
    assert resurfaced >= len(dormant) // 3


def test_drifting_interests_move_from_origin_to_target_category(tmp_path):
    cfg = dataclasses.replace(TINY, num_users=30, p_dormant=0.0, p_drifting=0.8, drift_deg_per_year_min=80,
                              drift_deg_per_year_max=120, events_median=500, min_span_frac=0.9)
    synthesize(tmp_path / "d", config=cfg, seed=2, progress=False)
    ds = load_dataset(tmp_path / "d")
    h, category = ds.histories, ds.items["category_id"]
    interests = pq.read_table(tmp_path / "d" / GROUND_TRUTH_FILES["interests"]).to_pandas()
    early_share, late_share = [], []
    for row in interests[interests.kind == "drifting"].itertuples():
        lo, hi = h.offsets[row.user_id], h.offsets[row.user_id + 1]
        cats = category[h.item_id[lo:hi]][h.label[lo:hi] == 1]
        origin, target = cats == row.category_id, cats == row.target_category_id
        quarter = len(cats) // 4
        if (origin | target)[:quarter].sum() < 5 or (origin | target)[-quarter:].sum() < 5:
            continue
        early_share.append(target[:quarter].sum() / (origin | target)[:quarter].sum())
        late_share.append(target[-quarter:].sum() / (origin | target)[-quarter:].sum())
    assert len(early_share) >= 10
    assert np.mean(late_share) > np.mean(early_share) + 0.3

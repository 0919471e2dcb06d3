"""Synthetic life-cycle generator: determinism, data contract, heavy tail, interest dynamics, CLI."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from twinv2.cli import app
from twinv2.data.store import load_dataset
from twinv2.data.synth import (
    GROUND_TRUTH_FILES,
    SCALES,
    SynthConfig,
    activity_counts,
    build_items,
    config_for_scale,
    dormant_active,
    generate_user,
    load_click_prob,
    synthesize,
)
from twinv2.errors import ConfigError, DataValidationError

# A few dozen users over two years: every test below generates in well under a second.
TINY = dataclasses.replace(SCALES["small"], num_users=40, num_items=600, num_categories=15, num_authors=60,
                           events_median=120.0, max_events=2500)


def _events(path) -> dict[str, np.ndarray]:
    t = pq.read_table(path / "events.parquet")
    return {name: t.column(name).to_numpy() for name in t.column_names}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "tiny"
    synthesize(out, config=TINY, seed=3, progress=False)
    return out


def test_synthesize_same_seed_same_dataset_other_seed_differs(tiny_dir, tmp_path):
    again = tmp_path / "again"
    synthesize(again, config=TINY, seed=3, progress=False)
    for name in ("items.parquet", "events.parquet", "user_offsets.npy", *GROUND_TRUTH_FILES.values()):
        if name.endswith(".npy"):
            assert np.array_equal(np.load(tiny_dir / name), np.load(again / name)), name
        else:
            assert pq.read_table(tiny_dir / name).equals(pq.read_table(again / name)), name
    assert json.loads((tiny_dir / "manifest.json").read_text()) == json.loads((again / "manifest.json").read_text())

    other = tmp_path / "other"
    synthesize(other, config=TINY, seed=4, progress=False)
    a, b = _events(tiny_dir), _events(other)
    assert len(a["item_id"]) != len(b["item_id"]) or not np.array_equal(a["item_id"], b["item_id"])


def test_synthesize_seed_generator_is_converted_once(tmp_path):
    m1 = synthesize(tmp_path / "a", config=TINY, users=5, seed=np.random.default_rng(7), progress=False)
    m2 = synthesize(tmp_path / "b", config=TINY, users=5, seed=np.random.default_rng(7), progress=False)
    assert m1.notes["seed"] == m2.notes["seed"]
    assert pq.read_table(tmp_path / "a" / "events.parquet").equals(pq.read_table(tmp_path / "b" / "events.parquet"))


def test_synthesize_output_satisfies_the_data_contract(tiny_dir):
    ds = load_dataset(tiny_dir)
    m = ds.manifest
    assert (m.num_users, m.num_items) == (TINY.num_users, TINY.num_items)
    assert np.array_equal(ds.histories.lengths(), activity_counts(TINY, 3))
    roles = {c.name: (c.role, c.vocab_size) for c in m.item_columns}
    assert roles["category_id"] == ("inherent_categorical", TINY.num_categories + 1)
    assert roles["author_id"] == ("inherent_categorical", TINY.num_authors + 1)
    assert roles["raw_item_id"][0] == "raw_id"
    assert [c.name for c in m.cross_numerics] == ["play_time", "completion_ratio"]
    assert ds.items["category_id"][1:].min() >= 1 and ds.items["author_id"][1:].min() >= 1
    assert ds.items["duration"].dtype == np.float32
    # Ground truth is present and named in the manifest, outside the files models read.
    assert m.notes["ground_truth"] == GROUND_TRUTH_FILES
    for rel in GROUND_TRUTH_FILES.values():
        assert (tiny_dir / rel).exists(), rel
    latent = np.load(tiny_dir / GROUND_TRUTH_FILES["item_latent"])
    assert latent.shape == (TINY.num_items + 1, TINY.latent_dim)
    assert np.allclose(np.linalg.norm(latent[1:], axis=1), 1.0, atol=1e-5)
    assert m.notes["config"]["num_users"] == TINY.num_users
    assert 0.1 < m.notes["label_rate"] < 0.7


def test_synthesize_authors_focus_on_few_categories(tiny_dir):
    ds = load_dataset(tiny_dir)
    author, category = ds.items["author_id"][1:], ds.items["category_id"][1:]
    per_author = [len(np.unique(category[author == a])) for a in np.unique(author)]
    assert max(per_author) <= 1 + TINY.author_secondary_max
    # And the main category holds at least half of each prolific author's items (up to sampling noise).
    shares = [np.bincount(category[author == a]).max() / (author == a).sum()
              for a in np.unique(author) if (author == a).sum() >= 20]
    assert shares and min(shares) >= 0.4


def test_synthesize_events_sorted_by_user_then_time_with_ties(tiny_dir):
    e = _events(tiny_dir)
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


def test_max_events_reaches_the_written_dataset(tmp_path):
    m = synthesize(tmp_path / "d", config=TINY, users=6, max_events=7000, seed=0, progress=False)
    assert m.notes["max_user_events"] == 7000
    assert load_dataset(tmp_path / "d").histories.lengths().max() == 7000


def test_synthesize_chunking_and_streaming_match_in_memory_generation(tiny_dir, tmp_path):
    small_chunks = tmp_path / "chunks"
    synthesize(small_chunks, config=TINY, seed=3, progress=False, chunk_events=97)
    assert pq.read_table(small_chunks / "events.parquet").equals(pq.read_table(tiny_dir / "events.parquet"))
    assert pq.read_table(small_chunks / GROUND_TRUTH_FILES["interests"]).equals(
        pq.read_table(tiny_dir / GROUND_TRUTH_FILES["interests"]))
    # The streamed file is exactly the users generated one by one, concatenated.
    items = build_items(TINY, 3)
    counts = activity_counts(TINY, 3)
    written = _events(tiny_dir)
    expected = [generate_user(items, TINY, 3, u, int(counts[u]))[0] for u in range(TINY.num_users)]
    for name, column in written.items():
        assert np.array_equal(column, np.concatenate([e[name] for e in expected])), name
    # The click probabilities stream in the same order, whatever the chunk size.
    truths = [generate_user(items, TINY, 3, u, int(counts[u]))[1] for u in range(TINY.num_users)]
    assert np.array_equal(load_click_prob(tiny_dir), np.concatenate([t.click_prob for t in truths]))
    assert np.array_equal(load_click_prob(small_chunks), load_click_prob(tiny_dir))


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


def test_click_prob_is_the_labels_true_probability(tiny_dir):
    prob = load_click_prob(tiny_dir)
    label = _events(tiny_dir)["label"]
    assert prob.dtype == np.float32 and prob.shape == label.shape
    assert prob.min() > 0.0 and prob.max() < 1.0
    # Calibrated overall (within 4 binomial standard errors) and in each decile of the probability.
    se = np.sqrt((prob * (1 - prob)).sum()) / len(prob)
    assert abs(label.mean() - prob.mean()) < 4 * se
    bins = np.quantile(prob, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(bins, prob, side="right") - 1, 0, 9)
    rates = np.array([label[which == b].mean() for b in range(10)])
    means = np.array([prob[which == b].mean() for b in range(10)])
    assert np.all(np.abs(rates - means) < 0.05), (rates, means)
    assert rates[-1] > rates[0] + 0.3  # labels are far more frequent where the probability is high


def test_load_click_prob_names_the_file_when_missing_or_mismatched(tiny_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    path = copy / GROUND_TRUTH_FILES["click_prob"]
    np.save(path, load_click_prob(tiny_dir)[:-1])
    with pytest.raises(DataValidationError, match=r"click_prob\.npy.*one probability per event"):
        load_click_prob(copy)
    np.save(path, np.zeros((2, 3), np.float32))
    with pytest.raises(DataValidationError, match=r"click_prob\.npy.*1-D float"):
        load_click_prob(copy)
    np.save(path, np.full(len(load_click_prob(tiny_dir)), 1.5, np.float32))
    with pytest.raises(DataValidationError, match=r"in \[0, 1\]"):
        load_click_prob(copy)
    path.write_bytes(b"not an npy file")
    with pytest.raises(DataValidationError, match=r"click_prob\.npy.*readable"):
        load_click_prob(copy)
    path.unlink()
    with pytest.raises(DataValidationError, match=r"click_prob\.npy.*no such file"):
        load_click_prob(copy)


@settings(max_examples=25, deadline=None)
@given(num_items=st.integers(1, 60), num_categories=st.integers(1, 12), seed=st.integers(0, 2**16),
       edge=st.sampled_from([0.0, 0.5, 1 - 2**-53]))
def test_build_items_category_sampling_stays_in_category(num_items, num_categories, seed, edge):
    cfg = dataclasses.replace(TINY, num_items=num_items, num_categories=num_categories,
                              num_authors=max(1, num_items // 3))
    items = build_items(cfg, seed)
    assert set(np.unique(items.category[1:])) == set(items.nonempty.tolist())
    cats = np.repeat(items.nonempty, 50)
    u = np.random.default_rng(seed).random(len(cats))
    u[::7] = edge
    drawn = items.sample_in_category(cats, u)
    assert (items.category[drawn] == cats).all()
    pop = items.sample_popular(u)
    assert pop.min() >= 1 and pop.max() <= num_items


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scale": "huge"}, "scale='huge'"),
        ({"users": 0}, "num_users=0"),
        ({"max_events": 5}, "max_events=5 should be >= min_events"),
        ({"seed": -1}, "seed=-1"),
        ({"config": SynthConfig(p_popular=0.8, p_explore=0.5)}, "p_popular \\+ p_explore"),
    ],
)
def test_synthesize_rejects_bad_parameters_and_writes_nothing(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        synthesize(tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_synthesize_replaces_a_dataset_but_never_other_folders(tiny_dir, tmp_path):
    previous = tmp_path / "previous"
    synthesize(previous, config=TINY, users=3, seed=0, progress=False)
    m = synthesize(previous, config=TINY, users=4, seed=0, progress=False)
    assert load_dataset(previous).manifest.num_users == m.num_users == 4
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"without manifest\.json"):
        synthesize(unrelated, config=TINY, users=3, progress=False)
    assert (unrelated / "notes.txt").read_text() == "keep me"


def test_cli_data_synth_writes_dataset_and_prints_summary(tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--scale", "small", "--users", "12",
                                      "--seed", "1", "--max-events", "900"])
    assert result.exit_code == 0, result.output
    assert "12 users" in result.output and "max history 900" in result.output and "MiB" in result.output
    m = load_dataset(out).manifest
    assert (m.num_users, m.notes["scale"], m.notes["seed"]) == (12, "small", 1)

    bad = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "bad"), "--scale", "huge"])
    assert bad.exit_code == 2 and "scale" in bad.output
    assert not (tmp_path / "bad").exists()


def test_lifecycle_scale_is_default_with_documented_changes_only(tmp_path):
    changed = {f.name for f in dataclasses.fields(SynthConfig)
               if getattr(SCALES["lifecycle"], f.name) != getattr(SCALES["default"], f.name)}
    assert SCALES["default"] == SynthConfig()
    doc = (Path(__file__).resolve().parents[2] / "docs" / "synthetic.md").read_text()
    section = " ".join(doc.split("## The `lifecycle` regime", 1)[1].split("\n## ", 1)[0].split())
    assert changed
    for name in changed:
        found = re.search(rf"`{name}` ([0-9.]+)", section)
        assert found and float(found.group(1)) == getattr(SCALES["lifecycle"], name), name
    # A few of its users generate and pass the data contract.
    m = synthesize(tmp_path / "lc", scale="lifecycle", users=3, max_events=1500, seed=0, progress=False)
    assert m.notes["scale"] == "lifecycle" and m.num_events == len(load_click_prob(tmp_path / "lc"))
    assert load_dataset(tmp_path / "lc").histories.lengths().min() >= SCALES["lifecycle"].min_events


def test_docs_list_every_parameter_with_its_default():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "synthetic.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line.split("|")[2].strip()
            for line in doc.splitlines() if line.startswith("| `")}
    for f in dataclasses.fields(SynthConfig):
        assert f.name in rows, f.name
        assert float(rows[f.name].replace("−", "-")) == float(f.default), f.name
    for rel in GROUND_TRUTH_FILES.values():
        assert rel in doc

"""Virtual items: means, representatives and timestamps against a direct recomputation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinv2.compress.cluster import ClusterConfig, completion_groups
from twinv2.compress.job import UserCompressor
from twinv2.compress.virtual_items import (
    build_virtual_items,
    canonical_order,
    member_value_counts,
    normalize_rows,
    sort_by_recency,
    update_virtual_items,
)
from twinv2.errors import CompressionError

SNAPSHOT = 50_000


def random_user(rng: np.random.Generator, n: int, num_clusters: int, dim: int = 4) -> dict[str, np.ndarray]:
    """Behaviors with a labelling that uses every cluster at least once."""
    labels = np.concatenate([np.arange(num_clusters), rng.integers(0, num_clusters, n - num_clusters)])
    rng.shuffle(labels)
    return {
        "labels": labels.astype(np.int64),
        "groups": rng.integers(0, 5, num_clusters).astype(np.int8),
        "x": normalize_rows(rng.standard_normal((n, dim)).astype(np.float32) + 0.01),
        "item_id": rng.integers(1, 30, n).astype(np.int64),
        "ts": np.sort(rng.integers(0, SNAPSHOT, n)).astype(np.int64),
        "play_time": rng.uniform(0, 100, n).astype(np.float32),
        "label": rng.integers(0, 2, n).astype(np.int8),
    }


def build(u: dict[str, np.ndarray], user_id: int = 7) -> dict[str, np.ndarray]:
    return build_virtual_items(user_id, u["labels"], u["groups"], u["x"], u["item_id"], u["ts"],
                               {"play_time": u["play_time"], "label": u["label"]}, SNAPSHOT)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 60), clusters=st.integers(1, 8), seed=st.integers(0, 2**32 - 1))
def test_build_virtual_items_means_equal_recomputed_means(n, clusters, seed):
    rng = np.random.default_rng(seed)
    clusters = min(clusters, n)
    u = random_user(rng, n, clusters)
    v = build(u)
    assert v["user_id"].tolist() == [7] * clusters
    for c in range(clusters):
        members = np.flatnonzero(u["labels"] == c)
        assert v["cluster_size"][c] == len(members)
        assert v["completion_group"][c] == u["groups"][c]
        np.testing.assert_allclose(v["mean_play_time"][c], u["play_time"][members].mean(), rtol=1e-5)
        np.testing.assert_allclose(v["mean_label"][c], u["label"][members].mean(), rtol=1e-6)
        np.testing.assert_allclose(v["mean_ts"][c], u["ts"][members].mean(), rtol=1e-12)
        np.testing.assert_allclose(v["mean_gap_to_snapshot"][c], (SNAPSHOT - u["ts"][members]).mean(),
                                   rtol=1e-5, atol=1e-2)
        assert v["first_ts"][c] == u["ts"][members].min() and v["last_ts"][c] == u["ts"][members].max()
        centroid = u["x"][members].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(v["centroid"][c], centroid, atol=1e-6)
        dist = ((u["x"][members] - v["centroid"][c]) ** 2).sum(axis=1)
        np.testing.assert_allclose(v["mean_sq_dist"][c], dist.mean(), atol=1e-5)
        # The representative is a member at minimal distance to the centroid (two members of a pair are
        # equally close, up to rounding).
        closest = members[dist <= dist.min() + 1e-6]
        assert v["rep_item_id"][c] in u["item_id"][closest]


def test_build_virtual_items_hand_computed_toy():
    x = normalize_rows(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 1]], np.float32))
    v = build_virtual_items(3, np.array([0, 0, 1, 1, 1]), np.array([2, 4], np.int8), x,
                            np.array([11, 12, 13, 14, 15]), np.array([10, 20, 30, 40, 50]),
                            {"label": np.array([1, 0, 0, 0, 1], np.int8)}, 100)
    assert v["cluster_size"].tolist() == [2, 3]
    assert v["first_ts"].tolist() == [10, 30] and v["last_ts"].tolist() == [20, 50]
    np.testing.assert_allclose(v["mean_label"], [0.5, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(v["mean_gap_to_snapshot"], [85.0, 60.0])
    # Cluster 1: (0,1), (0.1,1)/|.| and (1,1)/|.|; the middle one is closest to their mean.
    assert v["rep_item_id"].tolist()[1] == 14


@settings(max_examples=40, deadline=None)
@given(n_old=st.integers(1, 40), n_new=st.integers(0, 30), clusters=st.integers(1, 6), new_clusters=st.integers(0, 3),
       seed=st.integers(0, 2**32 - 1))
def test_update_virtual_items_equals_full_recomputation(n_old, n_new, clusters, new_clusters, seed):
    """Running means after an update equal the means over old and new members together."""
    rng = np.random.default_rng(seed)
    clusters = min(clusters, n_old)
    new_clusters = min(new_clusters, n_new)
    old_u = random_user(rng, n_old, clusters)
    old = build(old_u)
    new_u = random_user(rng, max(n_new, 1), 1)
    new_u = {k: v[:n_new] for k, v in new_u.items() if k not in ("labels", "groups")}
    new_u["ts"] = np.sort(rng.integers(SNAPSHOT, 2 * SNAPSHOT, n_new)).astype(np.int64)
    labels = np.concatenate([clusters + np.arange(new_clusters),
                             rng.integers(0, clusters + new_clusters, n_new - new_clusters)]).astype(np.int64)
    groups = np.concatenate([old_u["groups"], rng.integers(0, 5, new_clusters).astype(np.int8)])
    sizes = np.bincount(np.concatenate([old_u["labels"], labels]), minlength=clusters + new_clusters)
    rep_x = old_u["x"][[np.flatnonzero(old_u["item_id"] == r)[0] for r in old["rep_item_id"]]]
    snapshot2 = 2 * SNAPSHOT
    v = update_virtual_items(7, old, labels, groups, sizes, new_u["x"], rep_x, new_u["item_id"], new_u["ts"],
                             {"play_time": new_u["play_time"], "label": new_u["label"]}, snapshot2)
    all_labels = np.concatenate([old_u["labels"], labels])
    all_x = np.concatenate([old_u["x"], new_u["x"]])
    for name in ("play_time", "label", "ts"):
        values = np.concatenate([old_u[name], new_u[name]]).astype(np.float64)
        for c in range(clusters + new_clusters):
            column = "mean_ts" if name == "ts" else f"mean_{name}"
            np.testing.assert_allclose(v[column][c], values[all_labels == c].mean(), rtol=1e-5)
    all_ts = np.concatenate([old_u["ts"], new_u["ts"]])
    for c in range(clusters + new_clusters):
        members = all_labels == c
        assert v["cluster_size"][c] == members.sum()
        assert v["first_ts"][c] == all_ts[members].min() and v["last_ts"][c] == all_ts[members].max()
        centroid = all_x[members].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(v["centroid"][c], centroid, atol=1e-5)
        np.testing.assert_allclose(v["mean_sq_dist"][c], ((all_x[members] - centroid) ** 2).sum(1).mean(),
                                   atol=1e-4)
        np.testing.assert_allclose(v["mean_gap_to_snapshot"][c], snapshot2 - all_ts[members].mean(), rtol=1e-5)
        # The representative: the old one or a new member, whichever is closest to the new centroid.
        candidates = ([old["rep_item_id"][c]] if c < clusters else []) + new_u["item_id"][labels == c].tolist()
        assert v["rep_item_id"][c] in candidates
    np.testing.assert_array_equal(v["completion_group"], groups)


def test_sort_by_recency_orders_by_last_then_first_ts():
    cols = {"last_ts": np.array([5, 3, 5, 1]), "first_ts": np.array([4, 1, 2, 0]), "x": np.arange(4)}
    assert sort_by_recency(cols)["x"].tolist() == [3, 1, 2, 0]


def test_canonical_order_makes_results_independent_of_tie_order():
    """Shuffling rows with equal timestamps (as Spark may) gives bit-identical virtual items."""
    rng = np.random.default_rng(3)
    n = 200
    table = rng.standard_normal((21, 8)).astype(np.float32)
    comp = UserCompressor(table, {"duration": rng.uniform(1, 9, 21).astype(np.float32)},
                          ["play_time", "completion_ratio"], ["play_time", "completion_ratio", "label", "duration",
                                                              "gap_to_snapshot"],
                          ClusterConfig(gamma=5), SNAPSHOT, seed=1)
    ts = np.sort(rng.integers(0, 20, n) * 100).astype(np.int64)  # heavy ties
    args = (rng.integers(1, 21, n).astype(np.int64), ts, rng.integers(0, 2, n).astype(np.int8),
            {"play_time": rng.uniform(0, 9, n).astype(np.float32),
             "completion_ratio": rng.uniform(0, 1, n).astype(np.float32)})
    ref = comp.compress(4, *args)
    perm = np.lexsort((rng.random(n), ts))  # same ts order, ties shuffled
    shuffled = comp.compress(4, args[0][perm], ts[perm], args[2][perm], {k: v[perm] for k, v in args[3].items()})
    for name in ref:
        np.testing.assert_array_equal(ref[name], shuffled[name], err_msg=name)
    assert (np.diff(ref["last_ts"]) >= 0).all()


def test_canonical_order_sorts_by_ts_then_item_then_values():
    ts = np.array([5, 1, 5, 5])
    item = np.array([2, 9, 2, 1])
    label = np.array([1, 0, 0, 0])
    assert canonical_order(ts, item, label, [np.zeros(4)]).tolist() == [1, 3, 2, 0]


# ---- member shares of the inherent categoricals -----------------------------------------------------


def brute_counts(labels: np.ndarray, values: np.ndarray, rep_value: np.ndarray) -> tuple[list[int], list[int]]:
    majority, rep = [], []
    for c in range(len(rep_value)):
        members = values[labels == c]
        majority.append(max(np.unique(members, return_counts=True)[1], default=0))
        rep.append(int((members == rep_value[c]).sum()))
    return majority, rep


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 80), clusters=st.integers(1, 8), num_values=st.integers(1, 6), huge=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_member_value_counts_equal_brute_force(n, clusters, num_values, huge, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)  # some clusters may be empty
    codes = np.array([0, 3, 7, 2**60, 2**61, 5][:num_values]) if huge else np.arange(num_values)  # huge: lexsort
    values = codes[rng.integers(0, num_values, n)].astype(np.int64)
    rep_value = codes[rng.integers(0, num_values, clusters)].astype(np.int64)
    majority, rep = member_value_counts(labels, values, rep_value)
    assert (majority.tolist(), rep.tolist()) == brute_counts(labels, values, rep_value)


def test_build_virtual_items_member_shares_hand_computed():
    x = normalize_rows(np.array([[1, 0], [1, 0.1], [0, 1], [0.1, 1], [1, 1]], np.float32))
    v = build_virtual_items(3, np.array([0, 0, 1, 1, 1]), np.array([2, 4], np.int8), x,
                            np.array([11, 12, 13, 14, 15]), np.array([10, 20, 30, 40, 50]),
                            {"label": np.array([1, 0, 0, 0, 1], np.int8)}, 100,
                            categoricals={"cat": np.array([1, 2, 5, 6, 5]), "author": np.array([4, 4, 4, 4, 4])})
    # Cluster 0: values 1, 2 (majority 1/2); its representative, either member, holds 1/2 of them.
    # Cluster 1: values 5, 6, 5 (majority 2/3); its representative, item 14, has value 6 (1/3).
    assert v["rep_item_id"].tolist()[1] == 14
    np.testing.assert_allclose(v["majority_share_cat"], [1 / 2, 2 / 3], rtol=1e-6)
    np.testing.assert_allclose(v["rep_share_cat"], [1 / 2, 1 / 3], rtol=1e-6)
    assert v["majority_share_author"].tolist() == [1, 1] and v["rep_share_author"].tolist() == [1, 1]
    assert v["majority_share_cat"].dtype == np.float32
    assert "majority_share_cat" not in build_virtual_items(3, np.array([0, 0, 1, 1, 1]), np.array([2, 4], np.int8),
                                                           x, np.array([11, 12, 13, 14, 15]),
                                                           np.array([10, 20, 30, 40, 50]), {}, 100)


def test_update_virtual_items_member_shares_exact_where_known():
    """New clusters: exact; old clusters without new members: kept; old clusters that grew: NaN; the
    split categorical (``pure``): 1 everywhere."""
    rng = np.random.default_rng(5)
    old_u = random_user(rng, 12, 3)
    cats = rng.integers(0, 3, 12)
    old = build_virtual_items(7, old_u["labels"], old_u["groups"], old_u["x"], old_u["item_id"], old_u["ts"],
                              {"play_time": old_u["play_time"], "label": old_u["label"]}, SNAPSHOT,
                              categoricals={"cat": cats, "split": np.zeros(12, np.int64)})
    # 5 new behaviors: one joins old cluster 1, four open new clusters 3 (three members) and 4 (one).
    labels = np.array([1, 3, 3, 4, 3])
    new_cats = np.array([2, 1, 0, 2, 1])
    new_x = normalize_rows(rng.standard_normal((5, 4)).astype(np.float32))
    groups = np.concatenate([old_u["groups"], np.array([0, 1], np.int8)])
    sizes = np.bincount(np.concatenate([old_u["labels"], labels]))
    rep_x = old_u["x"][[np.flatnonzero(old_u["item_id"] == r)[0] for r in old["rep_item_id"]]]
    item_new = np.array([40, 41, 42, 43, 44])
    v = update_virtual_items(7, old, labels, groups, sizes, new_x, rep_x, item_new, np.arange(5) + SNAPSHOT,
                             {"play_time": np.ones(5, np.float32), "label": np.ones(5, np.int8)}, 2 * SNAPSHOT,
                             categoricals_new={"cat": new_cats, "split": np.zeros(5, np.int64)}, pure=("split",))
    for c in (0, 2):  # untouched
        assert v["majority_share_cat"][c] == old["majority_share_cat"][c]
        assert v["rep_share_cat"][c] == old["rep_share_cat"][c]
    assert np.isnan(v["majority_share_cat"][1]) and np.isnan(v["rep_share_cat"][1])
    # Cluster 3: values 1, 0, 1 -> majority 2/3; its representative's value decides the rep share.
    rep_row = [1, 2, 4][[41, 42, 44].index(int(v["rep_item_id"][3]))]
    np.testing.assert_allclose(v["majority_share_cat"][3:], [2 / 3, 1.0], rtol=1e-6)
    np.testing.assert_allclose(v["rep_share_cat"][3], (new_cats[labels == 3] == new_cats[rep_row]).mean(), rtol=1e-6)
    assert v["rep_share_cat"][4] == 1.0
    assert (v["majority_share_split"] == 1).all() and (v["rep_share_split"] == 1).all()
    # Without categoricals_new (the serving store), no share column; old rows without them give NaN.
    plain = update_virtual_items(7, old, labels, groups, sizes, new_x, rep_x, item_new, np.arange(5) + SNAPSHOT,
                                 {"play_time": np.ones(5, np.float32), "label": np.ones(5, np.int8)}, 2 * SNAPSHOT)
    assert not any(k.startswith(("majority_share_", "rep_share_")) for k in plain)
    bare = {k: val for k, val in old.items() if not k.startswith(("majority_share_", "rep_share_"))}
    w = update_virtual_items(7, bare, labels, groups, sizes, new_x, rep_x, item_new, np.arange(5) + SNAPSHOT,
                             {"play_time": np.ones(5, np.float32), "label": np.ones(5, np.int8)}, 2 * SNAPSHOT,
                             categoricals_new={"cat": new_cats})
    assert np.isnan(w["majority_share_cat"][:3]).all() and np.isfinite(w["majority_share_cat"][3:]).all()


def test_user_compressor_split_by_builds_pure_clusters_and_needs_the_item_values():
    rng = np.random.default_rng(2)
    n, num_items = 300, 40
    table = rng.standard_normal((num_items + 1, 8)).astype(np.float32)
    items = {"category_id": np.concatenate([[0], rng.integers(0, 5, num_items)]),
             "author_id": np.concatenate([[0], rng.integers(1, 9, num_items)])}
    comp = UserCompressor(table, {}, ["completion_ratio"], ["completion_ratio", "label", "gap_to_snapshot"],
                          ClusterConfig(gamma=6, split_by="category_id"), SNAPSHOT, seed=1)
    item_id = rng.integers(1, num_items + 1, n).astype(np.int64)
    args = (item_id, np.sort(rng.integers(0, SNAPSHOT, n)).astype(np.int64), rng.integers(0, 2, n).astype(np.int8),
            {"completion_ratio": rng.uniform(0, 1, n).astype(np.float32)})
    with pytest.raises(CompressionError, match=r"no split_values.*with_item_categoricals"):
        comp.compress(4, *args)
    with pytest.raises(CompressionError, match=r"not an inherent categorical.*expected one of: author_id"):
        comp.with_item_categoricals(items, ["author_id"])
    full = comp.with_item_categoricals(items, ["category_id", "author_id"])
    assert full.share_names == ["category_id", "author_id"]
    cols = full.compress(4, *args)
    assert cols["cluster_size"].sum() == n and cols["cluster_size"].max() <= 6
    assert (cols["majority_share_category_id"] == 1).all() and (cols["rep_share_category_id"] == 1).all()
    assert (cols["majority_share_author_id"] <= 1).all() and (cols["rep_share_author_id"] > 0).all()
    # Folding new behaviors keeps every cluster pure.
    m = 80
    new_item = rng.integers(1, num_items + 1, m).astype(np.int64)
    upd = full.update(4, cols, new_item, np.sort(rng.integers(SNAPSHOT, 2 * SNAPSHOT, m)).astype(np.int64),
                      np.ones(m, np.int8), {"completion_ratio": rng.uniform(0, 1, m).astype(np.float32)}, None)
    assert upd["cluster_size"].sum() == n + m and upd["cluster_size"].max() <= 6
    assert (upd["majority_share_category_id"] == 1).all()


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 600), budget=st.integers(1, 60), split=st.booleans(), seed=st.integers(0, 10))
def test_user_compressor_max_clusters_fits_the_budget(n, budget, split, seed):
    """A per-user budget of virtual items: at most ``max_clusters`` clusters, unless even one cluster per
    completion group (and split value) exceeds it; every behavior in exactly one cluster; deterministic;
    and a user within the budget gets exactly the clusters of the plain config."""
    rng = np.random.default_rng(seed)
    num_items = 40
    table = rng.standard_normal((num_items + 1, 8)).astype(np.float32)
    items = {"category_id": np.concatenate([[0], rng.integers(1, 4, num_items)])}
    config = ClusterConfig(gamma=5, max_clusters=budget, split_by="category_id" if split else None)
    comp = UserCompressor(table, {}, ["completion_ratio"], ["completion_ratio", "label", "gap_to_snapshot"],
                          config, SNAPSHOT, seed=1).with_item_categoricals(items, ["category_id"])
    item_id = rng.integers(1, num_items + 1, n).astype(np.int64)
    ratio = rng.uniform(0, 1, n).astype(np.float32)
    args = (item_id, np.sort(rng.integers(0, SNAPSHOT, n)).astype(np.int64), rng.integers(0, 2, n).astype(np.int8),
            {"completion_ratio": ratio})
    cols = comp.compress(4, *args)
    assert cols["cluster_size"].sum() == n
    cells = {(int(g), int(items["category_id"][i]) if split else 0)
             for g, i in zip(completion_groups(ratio, config), item_id, strict=True)}
    assert len(cols["cluster_size"]) <= max(budget, len(cells))
    again = comp.compress(4, *args)
    assert all(np.array_equal(cols[k], again[k], equal_nan=True) for k in cols)
    plain = replace(comp, config=replace(config, max_clusters=None)).compress(4, *args)
    if len(plain["cluster_size"]) <= budget:
        assert all(np.array_equal(cols[k], plain[k], equal_nan=True) for k in cols)

"""Per-user clustering: invariants (hypothesis), edge cases, bad input, and the sklearn reference."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinv2.compress.cluster import (
    ClusterConfig,
    _reference_cluster_life_cycle,
    assign_incremental,
    cluster_life_cycle,
    completion_groups,
)
from twinv2.errors import CompressionError, EmbeddingError


def normalised(emb: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    return emb / np.where(norms > 0, norms, 1.0)


def make_user(seed: int, n: int, d: int, distinct: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Clustered embeddings; with ``distinct`` set, rows are drawn from that many items (replays)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((8, d)) * 3
    pool = centers[rng.integers(0, 8, distinct or n)] + rng.standard_normal((distinct or n, d))
    emb = pool[rng.integers(0, len(pool), n)] if distinct else pool
    ratio = rng.uniform(-0.1, 1.1, n)  # out-of-range ratios are clipped
    return emb.astype(np.float32), ratio.astype(np.float32)


def check_invariants(res, emb: np.ndarray, ratio: np.ndarray, config: ClusterConfig) -> None:
    N = len(emb)
    C = len(res.sizes)
    assert res.labels.shape == (N,) and res.labels.dtype == np.int64
    assert res.groups.shape == (C,) and res.groups.dtype == np.int8
    assert res.centroids.shape == (C, emb.shape[1]) and res.centroids.dtype == np.float32
    # Every behavior in exactly one cluster; no empty cluster; sizes are the member counts.
    assert ((res.labels >= 0) & (res.labels < C)).all()
    assert np.array_equal(np.bincount(res.labels, minlength=C), res.sizes)
    assert (res.sizes >= 1).all()
    if config.method != "flat":
        assert (res.sizes <= config.gamma).all()
    # No cluster mixes completion groups; clusters are numbered group by group.
    row_groups = completion_groups(ratio, config)
    assert np.array_equal(res.groups[res.labels], row_groups)
    assert (np.diff(res.groups.astype(int)) >= 0).all()
    # Centroids are the means of the (normalised) members.
    pts = normalised(emb) if config.normalize else emb.astype(np.float64)
    sums = np.zeros((C, emb.shape[1]))
    np.add.at(sums, res.labels, pts)
    np.testing.assert_allclose(res.centroids, sums / np.maximum(res.sizes, 1)[:, None], rtol=1e-5, atol=1e-5)


configs = st.builds(
    ClusterConfig,
    gamma=st.integers(1, 30),
    num_groups=st.integers(1, 6),
    group_bins=st.sampled_from(["uniform", "quantile"]),
    split_exponent=st.sampled_from([0.3, 0.5, 1.0]),
    max_iter=st.integers(1, 20),
    method=st.sampled_from(["hierarchical", "flat", "random"]),
    flat_k=st.one_of(st.none(), st.integers(1, 12)),
    normalize=st.booleans(),
)


@settings(max_examples=60, deadline=None)
@given(config=configs, seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), d=st.integers(1, 8),
       replays=st.booleans())
def test_cluster_life_cycle_invariants_and_determinism(config, seed, n, d, replays):
    emb, ratio = make_user(seed, n, d, distinct=max(1, n // 10) if replays else None)
    emb_before, ratio_before = emb.copy(), ratio.copy()
    res = cluster_life_cycle(emb, ratio, config, seed)
    check_invariants(res, emb, ratio, config)
    assert np.array_equal(emb, emb_before) and np.array_equal(ratio, ratio_before)  # inputs untouched
    again = cluster_life_cycle(emb, ratio, config, np.random.default_rng(seed))  # int seed == its generator
    assert np.array_equal(res.labels, again.labels)
    assert np.array_equal(res.centroids, again.centroids)
    if config.method == "flat":
        k_cap = config.flat_k if config.flat_k is not None else None
        for g in np.unique(res.groups):
            members = int(res.sizes[res.groups == g].sum())
            expected_k = k_cap if k_cap is not None else -(-members // config.gamma)
            assert (res.groups == g).sum() <= min(expected_k, members)


@pytest.mark.parametrize("method", ["hierarchical", "flat", "random"])
def test_cluster_life_cycle_empty_and_single_behavior(method):
    config = ClusterConfig(method=method)
    empty = cluster_life_cycle(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), config, 0)
    assert empty.labels.shape == (0,) and empty.centroids.shape == (0, 4) and empty.sizes.shape == (0,)
    one = cluster_life_cycle(np.array([[3.0, 4.0]], np.float32), np.array([0.5], np.float32), config, 0)
    assert one.labels.tolist() == [0] and one.sizes.tolist() == [1] and one.groups.tolist() == [2]
    np.testing.assert_allclose(one.centroids, [[0.6, 0.8]], rtol=1e-6)


def test_cluster_life_cycle_gamma_plus_one_behaviors_split_into_two():
    emb, _ = make_user(0, 21, 8)
    ratio = np.full(21, 0.5, np.float32)  # one completion group
    res = cluster_life_cycle(emb, ratio, ClusterConfig(gamma=20), 0)
    assert len(res.sizes) == 2 and res.sizes.sum() == 21 and res.sizes.max() <= 20
    exact = cluster_life_cycle(emb[:20], ratio[:20], ClusterConfig(gamma=20), 0)
    assert exact.sizes.tolist() == [20]


def test_cluster_life_cycle_identical_embeddings_terminate_with_even_splits():
    emb = np.tile(np.array([[1.0, 2.0, 3.0]], np.float32), (20_000, 1))
    ratio = np.random.default_rng(0).uniform(0, 1, 20_000).astype(np.float32)
    res = cluster_life_cycle(emb, ratio, ClusterConfig(gamma=20), 0)
    check_invariants(res, emb, ratio, ClusterConfig(gamma=20))
    assert res.degenerate_splits > 0
    assert res.sizes.min() >= 8  # even splits, not one-member fragments


def test_cluster_life_cycle_separates_well_separated_blobs():
    rng = np.random.default_rng(1)
    centers = np.eye(16, dtype=np.float32)[:4] * 10  # four orthogonal directions
    which = rng.integers(0, 4, 400)
    emb = (centers[which] + 0.05 * rng.standard_normal((400, 16))).astype(np.float32)
    res = cluster_life_cycle(emb, np.full(400, 0.9, np.float32), ClusterConfig(gamma=200), 0)
    # Every cluster is pure: k-means never puts two blobs together when they are this far apart.
    for c in range(len(res.sizes)):
        assert len(np.unique(which[res.labels == c])) == 1


def test_cluster_life_cycle_float64_input_matches_float32():
    emb, ratio = make_user(2, 500, 8)
    a = cluster_life_cycle(emb, ratio, ClusterConfig(), 7)
    b = cluster_life_cycle(emb.astype(np.float64), ratio.astype(np.float64), ClusterConfig(), 7)
    assert np.array_equal(a.labels, b.labels)


def test_cluster_life_cycle_quality_matches_sklearn_reference():
    pytest.importorskip("sklearn")
    emb, ratio = make_user(3, 3000, 16)
    config = ClusterConfig(gamma=20)
    Xn = normalised(emb)

    def mean_sq(res):
        return float(((Xn - res.centroids[res.labels]) ** 2).sum(1).mean())

    ours = np.mean([mean_sq(cluster_life_cycle(emb, ratio, config, s)) for s in range(3)])
    ref = _reference_cluster_life_cycle(emb, ratio, config, 0)
    check_invariants(ref, emb, ratio, config)
    assert ours <= 1.03 * mean_sq(ref)


def test_completion_groups_uniform_and_quantile_bins():
    config = ClusterConfig(num_groups=5)
    ratio = np.array([-0.5, 0.0, 0.19, 0.2, 0.5, 0.99, 1.0, 1.7], np.float32)
    assert completion_groups(ratio, config).tolist() == [0, 0, 0, 1, 2, 4, 4, 4]
    quantile = ClusterConfig(num_groups=4, group_bins="quantile")
    g = completion_groups(np.linspace(0.0, 0.4, 400).astype(np.float32), quantile)
    assert np.bincount(g).tolist() == [100, 100, 100, 100]  # equal counts even on a narrow range
    assert completion_groups(np.zeros(0, np.float32), quantile).shape == (0,)


# ---- incremental -----------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_old=st.integers(0, 200), n_new=st.integers(0, 120),
       gamma=st.integers(1, 25), num_groups=st.integers(1, 5))
def test_assign_incremental_keeps_all_invariants(seed, n_old, n_new, gamma, num_groups):
    config = ClusterConfig(gamma=gamma, num_groups=num_groups)
    emb, ratio = make_user(seed, n_old + n_new, 6)
    full = cluster_life_cycle(emb[:n_old], ratio[:n_old], config, seed)
    inc = assign_incremental(full.centroids, full.sizes, full.groups, emb[n_old:], ratio[n_old:], config)
    C = len(full.sizes)
    labels = np.concatenate([full.labels, inc.labels])
    assert inc.num_new_clusters == len(inc.sizes) - C
    # Old clusters keep their place and group; every behavior is in exactly one cluster of its group.
    assert np.array_equal(inc.groups[:C], full.groups)
    assert np.array_equal(np.bincount(labels, minlength=len(inc.sizes)), inc.sizes)
    assert np.array_equal(inc.groups[labels], completion_groups(ratio, config))
    assert (inc.sizes <= gamma).all()
    # Centroids are the running means, i.e. the means over old and new members.
    sums = np.zeros_like(inc.centroids, dtype=np.float64)
    np.add.at(sums, labels, normalised(emb))
    np.testing.assert_allclose(inc.centroids, sums / inc.sizes[:, None], rtol=1e-4, atol=1e-5)
    # New clusters are numbered in the order they were opened.
    new_labels = inc.labels[inc.labels >= C]
    _, first = np.unique(new_labels, return_index=True)
    assert np.array_equal(new_labels[np.sort(first)], np.arange(C, len(inc.sizes)))


def test_assign_incremental_joins_nearest_until_full_then_opens_new_cluster():
    config = ClusterConfig(gamma=2, num_groups=1)
    centroids = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    new = np.array([[1.0, 0.1], [1.0, -0.1], [0.0, 1.0]], np.float32)
    inc = assign_incremental(centroids, np.array([1, 2]), np.array([0, 0]), new, np.full(3, 0.5), config)
    # Row 0 joins cluster 0 (now full); row 1 is nearest to full 0 -> opens 2; row 2 is nearest to full 1
    # -> opens 3, even though cluster 2 still has room.
    assert inc.labels.tolist() == [0, 2, 3]
    assert inc.sizes.tolist() == [2, 2, 1, 1] and inc.num_new_clusters == 2


def test_assign_incremental_quantile_bins_need_explicit_groups():
    config = ClusterConfig(group_bins="quantile")
    with pytest.raises(CompressionError, match="new_groups"):
        assign_incremental(np.zeros((1, 2), np.float32), [1], [0], np.ones((1, 2), np.float32), [0.5], config)
    inc = assign_incremental(np.zeros((1, 2), np.float32), [1], [0], np.ones((1, 2), np.float32), [0.5], config,
                             new_groups=np.array([3]))
    assert inc.groups.tolist() == [0, 3]


# ---- bad input -------------------------------------------------------------------------------------


def _good():
    return make_user(0, 10, 4)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"gamma": 0}, r"gamma=0"),
    ({"gamma": 2.5}, r"gamma=2.5"),
    ({"num_groups": 0}, r"num_groups=0"),
    ({"num_groups": 200}, r"num_groups=200"),
    ({"group_bins": "log"}, r"group_bins='log'"),
    ({"split_exponent": 0.0}, r"split_exponent=0.0"),
    ({"split_exponent": 1.5}, r"split_exponent=1.5"),
    ({"max_iter": 0}, r"max_iter=0"),
    ({"method": "spectral"}, r"method='spectral'"),
    ({"flat_k": 0}, r"flat_k=0"),
])
def test_cluster_config_rejects_bad_values(kwargs, match):
    with pytest.raises(CompressionError, match=match):
        ClusterConfig(**kwargs)


def test_cluster_life_cycle_rejects_nan_and_inf_embeddings_naming_rows():
    emb, ratio = _good()
    emb[3, 1] = np.nan
    emb[7, 0] = np.inf
    with pytest.raises(EmbeddingError, match=r"2 of 10 rows hold NaN or infinite values.*rows \[3, 7\]"):
        cluster_life_cycle(emb, ratio, ClusterConfig(), 0)


@pytest.mark.parametrize(("emb", "ratio", "error", "match"), [
    (np.zeros((10, 4), np.float32), np.zeros(9, np.float32), CompressionError, r"shape \(9,\) .* 10 rows"),
    (np.zeros((10, 4), np.float32), np.zeros((10, 1), np.float32), CompressionError, r"shape \(10, 1\)"),
    (np.zeros(10, np.float32), np.zeros(10, np.float32), EmbeddingError, r"2-D array .* shape \(10,\)"),
    (np.zeros((10, 0), np.float32), np.zeros(10, np.float32), EmbeddingError, r"at least one embedding dim"),
    (np.full((10, 2), "a"), np.zeros(10, np.float32), EmbeddingError, r"real numbers"),
    (np.zeros((2, 2), np.float32), np.array([0.1, np.nan], np.float32), CompressionError, r"1 values are NaN"),
])
def test_cluster_life_cycle_rejects_bad_shapes_and_values(emb, ratio, error, match):
    with pytest.raises(error, match=match):
        cluster_life_cycle(emb, ratio, ClusterConfig(), 0)


def test_cluster_life_cycle_rejects_bad_seed():
    emb, ratio = _good()
    with pytest.raises(CompressionError, match="seed='x'"):
        cluster_life_cycle(emb, ratio, ClusterConfig(), "x")


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"new_embeddings": np.zeros((2, 3), np.float32)}, EmbeddingError, r"dimension 3 .* dimension 2"),
    ({"new_embeddings": np.array([[np.nan, 0.0], [0.0, 1.0]], np.float32)}, EmbeddingError, r"NaN"),
    ({"new_completion": np.zeros(3)}, CompressionError, r"new_completion has shape \(3,\)"),
    ({"sizes": np.array([0])}, CompressionError, r"sizes: expected integers >= 1"),
    ({"groups": np.array([9])}, CompressionError, r"groups: expected integers in \[0, 5\)"),
    ({"sizes": np.array([1, 1])}, CompressionError, r"sizes has shape \(2,\)"),
])
def test_assign_incremental_rejects_bad_input(change, error, match):
    args = {"centroids": np.zeros((1, 2), np.float32), "sizes": np.array([1]), "groups": np.array([0]),
            "new_embeddings": np.ones((2, 2), np.float32), "new_completion": np.full(2, 0.5)}
    args.update(change)
    with pytest.raises(error, match=match):
        assign_incremental(config=ClusterConfig(), **args)


# ---- split_by: clusters within (completion group x categorical value) ---------------------------------

split_configs = configs.map(lambda c: replace(c, split_by="category_id"))


def make_values(seed: int, n: int, num_values: int) -> np.ndarray:
    """Skewed categorical codes in ``[0, num_values)``; 0 (unknown) is a value like the others."""
    rng = np.random.default_rng([seed, 1])
    p = 1.0 / np.arange(1, num_values + 1)
    return rng.choice(num_values, size=n, p=p / p.sum()).astype(np.int64)


@settings(max_examples=60, deadline=None)
@given(config=split_configs, seed=st.integers(0, 2**32 - 1), n=st.integers(0, 300), d=st.integers(1, 8),
       num_values=st.integers(1, 40), replays=st.booleans())
def test_cluster_life_cycle_split_by_never_mixes_values(config, seed, n, d, num_values, replays):
    emb, ratio = make_user(seed, n, d, distinct=max(1, n // 10) if replays else None)
    values = make_values(seed, n, num_values)
    values_before = values.copy()
    res = cluster_life_cycle(emb, ratio, config, seed, split_values=values)
    # Every behavior in exactly one cluster, no cluster above gamma (except flat), no group mixed.
    check_invariants(res, emb, ratio, config)
    assert np.array_equal(values, values_before)
    # Pure: every member holds its cluster's value.
    assert res.values.shape == res.sizes.shape and res.values.dtype == np.int64
    assert np.array_equal(res.values[res.labels], values)
    # Clusters are numbered by group, then by value.
    order = np.lexsort((res.values, res.groups.astype(np.int64)))
    assert np.array_equal(order, np.arange(len(res.sizes)))
    # A (group, value) pair of at most gamma behaviors is one cluster (no k-means was needed), except with
    # the flat method's fixed flat_k.
    groups = completion_groups(ratio, config)
    pairs, counts = np.unique(np.stack([groups.astype(np.int64), values]), axis=1, return_counts=True)
    cluster_pairs = np.stack([res.groups.astype(np.int64), res.values])
    for (g, v), count in zip(pairs.T, counts, strict=True):
        clusters = int(((cluster_pairs[0] == g) & (cluster_pairs[1] == v)).sum())
        assert clusters >= 1
        if count <= config.gamma and (config.method != "flat" or config.flat_k is None):
            assert clusters == 1
    # Deterministic for a fixed seed.
    again = cluster_life_cycle(emb, ratio, config, np.random.default_rng(seed), split_values=values)
    assert np.array_equal(res.labels, again.labels)
    assert np.array_equal(res.centroids, again.centroids)
    assert np.array_equal(res.values, again.values)


@settings(max_examples=25, deadline=None)
@given(config=configs, seed=st.integers(0, 2**32 - 1), n=st.integers(0, 200), value=st.integers(0, 5))
def test_cluster_life_cycle_split_by_one_value_equals_no_split(config, seed, n, value):
    """With one value for every behavior the roots are the groups: the same clusters as without split_by."""
    emb, ratio = make_user(seed, n, 4)
    plain = cluster_life_cycle(emb, ratio, config, seed)
    split = cluster_life_cycle(emb, ratio, replace(config, split_by="category_id"), seed,
                               split_values=np.full(n, value))
    assert plain.values is None
    assert np.array_equal(plain.labels, split.labels) and np.array_equal(plain.centroids, split.centroids)
    assert np.array_equal(split.values, np.full(len(split.sizes), value))


def test_cluster_life_cycle_split_by_separates_values_kmeans_would_merge():
    """Identical embeddings of two categories: without split they share clusters, with split never."""
    emb = np.ones((30, 4), np.float32)
    ratio = np.full(30, 0.5, np.float32)
    values = np.tile([3, 0], 15)  # 0 = unknown is a value of its own
    plain = cluster_life_cycle(emb, ratio, ClusterConfig(gamma=20, num_groups=1), 0)
    assert any(len(np.unique(values[plain.labels == c])) > 1 for c in range(len(plain.sizes)))
    res = cluster_life_cycle(emb, ratio, ClusterConfig(gamma=20, num_groups=1, split_by="category_id"), 0,
                             split_values=values)
    assert res.values.tolist() == [0, 3] and res.sizes.tolist() == [15, 15]
    assert np.array_equal(res.values[res.labels], values)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_old=st.integers(0, 200), n_new=st.integers(0, 120),
       gamma=st.integers(1, 25), num_groups=st.integers(1, 5), num_values=st.integers(1, 12))
def test_assign_incremental_split_by_never_joins_another_value(seed, n_old, n_new, gamma, num_groups, num_values):
    config = ClusterConfig(gamma=gamma, num_groups=num_groups, split_by="category_id")
    emb, ratio = make_user(seed, n_old + n_new, 6)
    values = make_values(seed, n_old + n_new, num_values)
    full = cluster_life_cycle(emb[:n_old], ratio[:n_old], config, seed, split_values=values[:n_old])
    inc = assign_incremental(full.centroids, full.sizes, full.groups, emb[n_old:], ratio[n_old:], config,
                             values=full.values, new_values=values[n_old:])
    C = len(full.sizes)
    labels = np.concatenate([full.labels, inc.labels])
    assert np.array_equal(inc.groups[:C], full.groups) and np.array_equal(inc.values[:C], full.values)
    assert np.array_equal(np.bincount(labels, minlength=len(inc.sizes)), inc.sizes)
    assert (inc.sizes <= gamma).all()
    # Every behavior is in a cluster of its own group and its own value.
    assert np.array_equal(inc.groups[labels], completion_groups(ratio, config))
    assert np.array_equal(inc.values[labels], values)
    sums = np.zeros_like(inc.centroids, dtype=np.float64)
    np.add.at(sums, labels, normalised(emb))
    np.testing.assert_allclose(inc.centroids, sums / inc.sizes[:, None], rtol=1e-4, atol=1e-5)


def test_assign_incremental_split_by_joins_same_value_or_opens_a_singleton():
    config = ClusterConfig(gamma=3, num_groups=1, split_by="category_id")
    centroids = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    new = np.array([[1.0, 0.05], [1.0, -0.05], [1.0, 0.0]], np.float32)
    # All three new rows are nearest to cluster 0 (value 7), which has room. Row 0 has value 9: it joins
    # cluster 1 (value 9) although cluster 1 is farther; row 1 has value 7: it joins cluster 0; row 2 has
    # value 0 (unknown), which no cluster holds: a new singleton.
    inc = assign_incremental(centroids, np.array([1, 1]), np.array([0, 0]), new, np.full(3, 0.5), config,
                             values=np.array([7, 9]), new_values=np.array([9, 7, 0]))
    assert inc.labels.tolist() == [1, 0, 2]
    assert inc.sizes.tolist() == [2, 2, 1] and inc.values.tolist() == [7, 9, 0] and inc.num_new_clusters == 1


@pytest.mark.parametrize(("config", "kwargs", "match"), [
    (ClusterConfig(split_by="category_id"), {}, "needs split_values"),
    (ClusterConfig(), {"split_values": np.zeros(10, np.int64)}, "split_by is None"),
    (ClusterConfig(split_by="category_id"), {"split_values": np.zeros(9, np.int64)}, r"expected 10 integer"),
    (ClusterConfig(split_by="category_id"), {"split_values": np.zeros(10)}, r"expected 10 integer"),
])
def test_cluster_life_cycle_split_values_must_match_split_by(config, kwargs, match):
    emb, ratio = _good()
    with pytest.raises(CompressionError, match=match):
        cluster_life_cycle(emb, ratio, config, 0, **kwargs)


def test_assign_incremental_split_by_needs_both_value_arrays():
    config = ClusterConfig(split_by="category_id")
    args = (np.zeros((1, 2), np.float32), [1], [0], np.ones((1, 2), np.float32), [0.5], config)
    with pytest.raises(CompressionError, match="needs values"):
        assign_incremental(*args, new_values=np.array([1]))
    with pytest.raises(CompressionError, match="needs new_values"):
        assign_incremental(*args, values=np.array([1]))
    with pytest.raises(CompressionError, match="split_by is None"):
        assign_incremental(*args[:-1], ClusterConfig(), values=np.array([1]), new_values=np.array([1]))


@pytest.mark.parametrize("bad", ["", 3])
def test_cluster_config_rejects_bad_split_by(bad):
    with pytest.raises(CompressionError, match=r"split_by="):
        ClusterConfig(split_by=bad)

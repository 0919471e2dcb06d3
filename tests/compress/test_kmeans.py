"""Compiled k-means kernels against plain NumPy oracles."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from twinv2.compress import kmeans
from twinv2.compress.cluster import split_counts


def numpy_lloyd(X: np.ndarray, centers: np.ndarray, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Textbook Lloyd in float64: assign to the nearest centre (lowest index on ties), move to the mean."""
    X64 = X.astype(np.float64)
    C = centers.astype(np.float64).copy()
    labels = np.full(len(X), -1)
    for _ in range(max_iter):
        dist = ((X64[:, None, :] - C[None, :, :]) ** 2).sum(-1)
        new = dist.argmin(1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(C)):
            if (labels == j).any():
                C[j] = X64[labels == j].mean(0)
    return labels, C


def blobs(rng: np.random.Generator, n: int, d: int, k: int, spread: float) -> np.ndarray:
    centers = rng.standard_normal((k, d)) * 4
    return (centers[rng.integers(0, k, n)] + spread * rng.standard_normal((n, d))).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 200), d=st.integers(1, 12), k=st.integers(2, 9))
def test_lloyd_from_centers_matches_numpy_oracle(seed, n, d, k):
    rng = np.random.default_rng(seed)
    k = min(k, n)
    X = blobs(rng, n, d, k, spread=0.3)
    init = X[rng.choice(n, k, replace=False)].copy()
    labels, centers, _ = kmeans.lloyd_from_centers(X, init, 50)
    ref_labels, ref_centers = numpy_lloyd(X, init, 50)
    # Well-separated blobs have no near-ties, so the float32 expansion and the float64 oracle agree exactly.
    dist = ((X[:, None, :].astype(np.float64) - ref_centers[None]) ** 2).sum(-1)
    srt = np.sort(dist, axis=1)
    clear = srt[:, 1] - srt[:, 0] > 1e-3 * (1 + srt[:, 0])
    assert np.array_equal(labels[clear], ref_labels[clear])
    used = np.unique(ref_labels)
    np.testing.assert_allclose(centers[used], ref_centers[used], rtol=1e-4, atol=1e-4)


def test_split_count_matches_vectorised_rule():
    n = np.arange(2, 5000)
    for exponent in (0.3, 0.5, 1.0):
        expected = split_counts(n, exponent)
        got = np.array([kmeans.split_count(int(v), exponent) for v in n])
        assert np.array_equal(got, expected)
    # Exact powers land on the intended side despite floating point: 1024 ** 0.3 == 8, 32 ** 0.6 == 8.
    assert kmeans.split_count(1024, 0.3) == 8
    assert kmeans.split_count(32, 0.6) == 8
    assert kmeans.split_count(21, 0.3) == 2  # floor(21 ** 0.3) = 2
    assert kmeans.split_count(3, 1.0) == 3  # capped at n


def _tree(X: np.ndarray, gamma: int, mode: int, seed: int = 1, exponent: float = 0.3):
    xsq = (X * X).sum(1).astype(np.float32)
    order = np.arange(len(X), dtype=np.int64)
    starts = np.array([0], dtype=np.int64)
    ends = np.array([len(X)], dtype=np.int64)
    seeds = np.array([seed], dtype=np.uint64)
    leaf_start, leaf_end, degenerate, passes = kmeans.cluster_tree(X, xsq, order, starts, ends, seeds, gamma,
                                                                   exponent, 20, mode)
    return order, leaf_start, leaf_end, degenerate, passes


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 400), gamma=st.integers(1, 40),
       mode=st.sampled_from([kmeans.MODE_KMEANS, kmeans.MODE_RANDOM]))
def test_cluster_tree_leaves_tile_the_range_and_respect_gamma(seed, n, gamma, mode):
    X = blobs(np.random.default_rng(seed), n, 6, 5, spread=0.5)
    order, leaf_start, leaf_end, _, _ = _tree(X, gamma, mode, seed=seed)
    assert np.array_equal(np.sort(order), np.arange(n))  # order stays a permutation
    by_start = np.argsort(leaf_start)
    starts, ends = leaf_start[by_start], leaf_end[by_start]
    assert starts[0] == 0 and ends[-1] == n
    assert np.array_equal(starts[1:], ends[:-1])  # contiguous, disjoint, covering
    assert ((ends - starts) >= 1).all() and ((ends - starts) <= gamma).all()


def test_cluster_tree_identical_rows_split_evenly_and_count_degenerate_splits():
    X = np.ones((5000, 8), dtype=np.float32)
    _, leaf_start, leaf_end, degenerate, _ = _tree(X, 20, kmeans.MODE_KMEANS)
    sizes = leaf_end - leaf_start
    assert sizes.sum() == 5000 and sizes.max() <= 20
    assert degenerate > 0
    assert sizes.min() >= 8  # even splits leave no fragments: 5000 -> 12 parts -> 6 -> 3 -> 2 -> 11-12


def test_random_mode_splits_are_balanced():
    X = np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32)
    _, leaf_start, leaf_end, _, passes = _tree(X, 20, kmeans.MODE_RANDOM)
    sizes = leaf_end - leaf_start
    # 1000 -> 7 parts of 142-143 -> 4 parts of 35-36 -> 2 parts of 17-18.
    assert sizes.min() >= 17 and sizes.max() <= 18
    assert passes == 0


def test_cluster_tree_is_deterministic_and_seed_sensitive():
    X = blobs(np.random.default_rng(3), 3000, 8, 30, spread=1.0)
    a = _tree(X, 20, kmeans.MODE_KMEANS, seed=5)
    b = _tree(X, 20, kmeans.MODE_KMEANS, seed=5)
    c = _tree(X, 20, kmeans.MODE_KMEANS, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a[:3], b[:3], strict=True))
    assert not np.array_equal(a[0], c[0])


def test_gather_normalize_writes_unit_rows_keeps_zero_rows_and_reports_non_finite():
    E = np.array([[3.0, 4.0], [0.0, 0.0], [np.nan, 1.0], [1.0, np.inf], [0.0, 2.0]], dtype=np.float32)
    dest = np.array([4, 3, 2, 1, 0], dtype=np.int64)
    out = np.full((5, 2), -7.0, dtype=np.float32)
    xsq = np.zeros(5, dtype=np.float32)
    bad_rows = np.full(5, -1, dtype=np.int64)
    bad = kmeans.gather_normalize(E, dest, True, out, xsq, bad_rows)
    assert bad == 2 and sorted(bad_rows[:2]) == [2, 3]
    np.testing.assert_allclose(out[4], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[3], [0.0, 0.0])
    np.testing.assert_allclose(out[0], [0.0, 1.0])
    np.testing.assert_allclose(xsq[[0, 3, 4]], [1.0, 0.0, 1.0], rtol=1e-6)


def python_incremental(centroids, sizes, groups, X, g, gamma):
    """The incremental rule written out plainly (float64)."""
    cents = [c.astype(np.float64) for c in centroids]
    sizes, groups, labels = list(sizes), list(groups), []
    for x, gi in zip(X.astype(np.float64), g, strict=True):
        cands = [j for j in range(len(cents)) if groups[j] == gi]
        best = min(cands, key=lambda j: ((x - cents[j]) ** 2).sum()) if cands else None
        if best is not None and sizes[best] < gamma:
            cents[best] = cents[best] + (x - cents[best]) / (sizes[best] + 1)
            sizes[best] += 1
            labels.append(best)
        else:
            cents.append(x.copy())
            sizes.append(1)
            groups.append(gi)
            labels.append(len(cents) - 1)
    return np.array(labels), np.array(cents), np.array(sizes), np.array(groups)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), C=st.integers(0, 12), M=st.integers(0, 40), gamma=st.integers(1, 6))
def test_incremental_assign_matches_python_oracle(seed, C, M, gamma):
    rng = np.random.default_rng(seed)
    d = 4
    centroids = np.zeros((C + M, d), dtype=np.float32)
    centroids[:C] = rng.standard_normal((C, d)) * 3
    sizes = np.zeros(C + M, dtype=np.int64)
    sizes[:C] = rng.integers(1, gamma + 1, C)
    groups = np.zeros(C + M, dtype=np.int8)
    groups[:C] = rng.integers(0, 3, C)
    X = (rng.standard_normal((M, d)) * 3).astype(np.float32)
    g = rng.integers(0, 3, M).astype(np.int8)
    ref = python_incremental(centroids[:C], sizes[:C], groups[:C], X, g, gamma)
    labels = np.empty(M, dtype=np.int64)
    total = kmeans.incremental_assign(centroids, sizes, groups, C, X, g, gamma, labels)
    assert np.array_equal(labels, ref[0])
    assert total == len(ref[2])
    np.testing.assert_allclose(centroids[:total], ref[1].reshape(total, d), rtol=1e-5, atol=1e-5)
    assert np.array_equal(sizes[:total], ref[2]) and np.array_equal(groups[:total], ref[3])


_WARMUP_PROBE = """
import numpy as np
from numba.core.registry import CPUDispatcher
from twinv2.compress import kmeans
from twinv2.compress.cluster import ClusterConfig, assign_incremental, cluster_life_cycle

kernels = {n: f for n, f in vars(kmeans).items() if isinstance(f, CPUDispatcher)}
assert not any(f.signatures for f in kernels.values()), "compiled before warmup"
kmeans.warmup()
after_warmup = {n: list(f.signatures) for n, f in kernels.items()}
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    emb = rng.standard_normal((300, 8)).astype(dtype)
    comp = rng.uniform(0, 1, 300)
    for method in ("hierarchical", "flat", "random"):
        res = cluster_life_cycle(emb, comp, ClusterConfig(gamma=8, method=method), seed=1)
    assign_incremental(res.centroids, res.sizes, res.groups, emb[:20], comp[:20], ClusterConfig(gamma=8))
kmeans.lloyd_from_centers(emb.astype(np.float32), emb[:3].astype(np.float32), 5)
compiled_late = {n: [s for s in f.signatures if s not in after_warmup[n]] for n, f in kernels.items()}
compiled_late = {n: s for n, s in compiled_late.items() if s}
assert not compiled_late, f"compiled after warmup (inside a timed region): {compiled_late}"
print("ok", sum(map(len, after_warmup.values())))
"""


def test_warmup_compiles_every_kernel_the_job_calls():
    """In a fresh interpreter (nothing compiled yet), warmup() leaves nothing for a clustering run to
    compile: benchmarks time after warmup(), so a kernel it skips would put JIT time into the timings."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", _WARMUP_PROBE], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith("ok")

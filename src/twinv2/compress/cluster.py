"""Per-user life-cycle clustering (TWIN-V2 §3.2, DESIGN §2.2).

A user's behaviors are split into ``num_groups`` play-completion groups; inside each group the
(L2-normalised) item embeddings are clustered by recursive k-means: a set with more than ``gamma``
members is split into ``k = max(2, floor(|C| ** split_exponent))`` clusters, and any cluster of at most
``gamma`` members is final. Every behavior lands in exactly one cluster and no cluster mixes groups.

With ``ClusterConfig.split_by`` (the name of an inherent categorical, e.g. ``category_id``), the caller
passes each behavior's value of that categorical and the recursion starts from every (completion group,
value) pair instead of every group: no cluster mixes two values (code 0, unknown, is a value of its own).
All pairs go to the same single compiled call; a pair of at most ``gamma`` behaviors is a leaf at once,
without k-means.

Three methods share that frame (``ClusterConfig.method``):

* ``"hierarchical"`` (the paper's method): the recursion above, all of it inside one compiled call
  (:func:`twinv2.compress.kmeans.cluster_tree`; k-means details and their cost there).
* ``"flat"``: one k-means per group with a fixed ``k`` (``flat_k``, default ``ceil(n_group / gamma)``,
  the fewest clusters that could hold the group at size ``gamma``). Clusters may exceed ``gamma``; the cost
  grows like ``n_group² / gamma``, which is fine for the ablation on ordinary users but slow for 10^6.
* ``"random"``: the same recursion and size rule, but each split is a random partition into ``k`` even
  parts instead of k-means (the paper's random-grouping ablation).

Degenerate splits (fewer than two non-empty clusters, e.g. all members identical, which happens whenever a
user replays one item many times) fall back to an even split into ``k`` parts; their number is reported in
:attr:`ClusterResult.degenerate_splits`. Zero embedding rows stay zero under normalisation.

Randomness: ``seed`` is converted once to a ``numpy`` generator, which draws one 64-bit seed per completion
group; every set derives its children's seeds from its own stream. The result depends on nothing else (no
threads, no worker count). The job seeds each user with ``np.random.default_rng([seed, user_id])``.

:func:`_reference_cluster_life_cycle` is the slow, obviously-correct version (recursive scikit-learn
``KMeans``) that tests and ``benchmarks/compress_speed.py`` compare against.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> emb = rng.standard_normal((500, 8)).astype(np.float32)
    >>> ratio = rng.uniform(0, 1, 500).astype(np.float32)
    >>> res = cluster_life_cycle(emb, ratio, ClusterConfig(gamma=20), seed=0)
    >>> int(res.sizes.sum()), bool(res.sizes.max() <= 20)
    (500, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twinv2.compress import kmeans
from twinv2.errors import CompressionError, EmbeddingError

__all__ = [
    "METHODS",
    "ClusterConfig",
    "ClusterResult",
    "IncrementalResult",
    "assign_incremental",
    "cluster_life_cycle",
    "completion_groups",
    "split_counts",
]

METHODS = ("hierarchical", "flat", "random")
GROUP_BINS = ("uniform", "quantile")
_MAX_BAD_ROWS_SHOWN = 5


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class ClusterConfig:
    """How one user's life cycle is clustered. Invalid values raise :class:`CompressionError`."""

    gamma: int = 20                  # largest final cluster (paper default 20)
    num_groups: int = 5              # M play-completion groups
    group_bins: str = "uniform"      # "uniform": equal width on clipped [0, 1]; "quantile": per-user quantiles
    split_exponent: float = 0.3      # a set of n > gamma members splits into max(2, floor(n ** exponent))
    max_iter: int = 20               # Lloyd assignment passes per split (fewer when assignments settle)
    method: str = "hierarchical"     # "hierarchical" | "flat" | "random"
    flat_k: int | None = None        # method="flat": clusters per group; None = ceil(n_group / gamma)
    normalize: bool = True           # L2-normalise embeddings before clustering (zero rows stay zero)
    split_by: str | None = None      # inherent categorical whose values clusters never mix (None: groups only)
    # Per-user budget of virtual items: a user whose clusters exceed it is re-clustered with gamma doubled
    # until they fit (or each completion group / split cell is one cluster), so the compressed life cycle
    # fits a GSU budget L (None: gamma alone decides). See UserCompressor.compress.
    max_clusters: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.gamma) or self.gamma < 1:
            raise CompressionError(f"ClusterConfig.gamma={self.gamma!r}: expected an integer >= 1")
        if not _is_int(self.num_groups) or not 1 <= self.num_groups <= 127:
            raise CompressionError(
                f"ClusterConfig.num_groups={self.num_groups!r}: expected an integer in [1, 127]")
        if self.group_bins not in GROUP_BINS:
            raise CompressionError(f"ClusterConfig.group_bins={self.group_bins!r}: expected one of {GROUP_BINS}")
        exponent = self.split_exponent
        if isinstance(exponent, bool) or not isinstance(exponent, (int, float, np.floating, np.integer)) \
                or not 0.0 < float(exponent) <= 1.0:
            raise CompressionError(f"ClusterConfig.split_exponent={exponent!r}: expected a number in (0, 1]")
        if not _is_int(self.max_iter) or self.max_iter < 1:
            raise CompressionError(f"ClusterConfig.max_iter={self.max_iter!r}: expected an integer >= 1")
        if self.method not in METHODS:
            raise CompressionError(f"ClusterConfig.method={self.method!r}: expected one of {METHODS}")
        if self.flat_k is not None and (not _is_int(self.flat_k) or self.flat_k < 1):
            raise CompressionError(f"ClusterConfig.flat_k={self.flat_k!r}: expected None or an integer >= 1")
        if not isinstance(self.normalize, (bool, np.bool_)):
            raise CompressionError(f"ClusterConfig.normalize={self.normalize!r}: expected a bool")
        if self.max_clusters is not None and (not _is_int(self.max_clusters) or self.max_clusters < 1):
            raise CompressionError(f"ClusterConfig.max_clusters={self.max_clusters!r}: expected None or an "
                                   "integer >= 1")
        if self.split_by is not None and (not isinstance(self.split_by, str) or not self.split_by):
            raise CompressionError(f"ClusterConfig.split_by={self.split_by!r}: expected None or the name of an "
                                   "inherent categorical (e.g. 'category_id')")


@dataclass
class ClusterResult:
    """Clusters of one user's behaviors; clusters are numbered ``0..C-1`` in completion-group order."""

    labels: np.ndarray      # int64 [N] cluster of each behavior (input row order)
    groups: np.ndarray      # int8 [C] completion group of each cluster (non-decreasing)
    centroids: np.ndarray   # float32 [C, d] mean of the (normalised) member embeddings
    sizes: np.ndarray       # int64 [C] members per cluster
    degenerate_splits: int = 0  # splits that fell back to an even partition (duplicates, collapses)
    values: np.ndarray | None = None  # int64 [C] split_by value shared by every member (None without split_by)


@dataclass
class IncrementalResult:
    """Clusters after :func:`assign_incremental`: the old ones (updated) followed by the new ones."""

    labels: np.ndarray      # int64 [M] cluster of each new behavior; values >= C are new clusters
    centroids: np.ndarray   # float32 [C', d] running-mean centroids
    sizes: np.ndarray       # int64 [C']
    groups: np.ndarray      # int8 [C']
    num_new_clusters: int   # C' - C
    values: np.ndarray | None = None  # int64 [C'] split_by value of each cluster (None without split_by)


def split_counts(n: np.ndarray, exponent: float) -> np.ndarray:
    """Children per split: ``max(2, floor(n ** exponent))``, capped at ``n`` (int64 ``[S]`` -> ``[S]``).

    The vectorised twin of :func:`twinv2.compress.kmeans.split_count` (same formula, same 1e-9 slack that
    keeps exact powers such as ``1024 ** 0.3`` on the intended side).
    """
    n = np.asarray(n, dtype=np.int64)
    k = np.floor(np.power(n.astype(np.float64), float(exponent)) + 1e-9).astype(np.int64)
    return np.minimum(np.maximum(k, 2), n)


def completion_groups(completion_ratio: np.ndarray, config: ClusterConfig) -> np.ndarray:
    """Completion group of each behavior: int8 ``[N]`` in ``[0, num_groups)``.

    Ratios are clipped to ``[0, 1]``. ``"uniform"`` bins have equal width (a ratio of exactly 1 goes to the
    last bin); ``"quantile"`` bins cut at the user's own ``1/M, ..., (M-1)/M`` quantiles, a ratio equal to
    a cut going to the lower bin. NaN ratios raise :class:`CompressionError`.
    """
    ratio = np.asarray(completion_ratio)
    if ratio.ndim != 1:
        raise CompressionError(f"completion_ratio: expected a 1-D array [N], found shape {ratio.shape}")
    if ratio.size and not np.issubdtype(ratio.dtype, np.number):
        raise CompressionError(f"completion_ratio: expected numbers, found dtype {ratio.dtype}")
    ratio = ratio.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(ratio))
    if bad.size:
        raise CompressionError(
            f"completion_ratio: {bad.size} values are NaN or infinite, expected numbers in [0, 1] "
            f"(first rows: {bad[:_MAX_BAD_ROWS_SHOWN].tolist()})")
    M = config.num_groups
    clipped = np.clip(ratio, 0.0, 1.0)
    if config.group_bins == "uniform" or clipped.size == 0:
        g = np.minimum(np.floor(clipped * M), M - 1)
    else:
        cuts = np.quantile(clipped, np.arange(1, M) / M)
        g = np.searchsorted(cuts, clipped, side="left")
    return g.astype(np.int8)


def _as_generator(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if not _is_int(seed):
        raise CompressionError(f"seed={seed!r}: expected an int or a numpy Generator")
    return np.random.default_rng(seed)


def _check_embeddings(embeddings: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """A 2-D float32/float64 view of ``embeddings`` (converted only when the dtype is something else)."""
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise EmbeddingError(f"{name}: expected a 2-D array [N, d], found shape {emb.shape}")
    if emb.shape[1] < 1:
        raise EmbeddingError(f"{name}: expected at least one embedding dimension, found shape {emb.shape}")
    if emb.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(emb.dtype, np.number) and not np.issubdtype(emb.dtype, np.complexfloating)):
            raise EmbeddingError(f"{name}: expected real numbers, found dtype {emb.dtype}")
        emb = emb.astype(np.float32)
    return emb


def _prepare(emb: np.ndarray, dest: np.ndarray, normalize: bool, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Working copy with ``X[dest[i]] = normalise(emb[i])`` (float32 ``[N, d]``) and its squared row norms."""
    N, d = emb.shape
    X = np.empty((N, d), dtype=np.float32)
    xsq = np.empty(N, dtype=np.float32)
    bad_rows = np.empty(_MAX_BAD_ROWS_SHOWN, dtype=np.int64)
    bad = kmeans.gather_normalize(emb, dest, bool(normalize), X, xsq, bad_rows)
    if bad:
        shown = sorted(bad_rows[: min(bad, _MAX_BAD_ROWS_SHOWN)].tolist())
        raise EmbeddingError(f"{name}: {bad} of {N} rows hold NaN or infinite values, expected finite "
                             f"numbers (e.g. rows {shown})")
    return X, xsq


def _split_flat(X: np.ndarray, xsq: np.ndarray, order: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                config: ClusterConfig, rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """One k-means per group range with a fixed ``k``; no recursion. No input validation."""
    sizes = ends - starts
    if config.flat_k is None:
        ks = -(-sizes // config.gamma)  # ceil(n / gamma)
    else:
        ks = np.full(sizes.shape, config.flat_k, dtype=np.int64)
    ks = np.minimum(ks, sizes).astype(np.int64)
    single = ks <= 1
    leaf_starts, leaf_ends = [starts[single]], [ends[single]]
    starts, ends, ks = starts[~single], ends[~single], ks[~single]
    if not starts.size:
        return leaf_starts, leaf_ends, 0
    seeds = rng.integers(0, np.iinfo(np.uint64).max, size=starts.size, dtype=np.uint64, endpoint=True)
    total = int(ks.sum())
    child_start = np.empty(total, dtype=np.int64)
    child_end = np.empty(total, dtype=np.int64)
    num_children, num_degenerate, _ = kmeans.split_level(X, xsq, order, starts, ends, ks, seeds, config.max_iter,
                                                      kmeans.MODE_KMEANS, child_start, child_end)
    leaf_starts.append(child_start[:num_children])
    leaf_ends.append(child_end[:num_children])
    return leaf_starts, leaf_ends, int(num_degenerate)


def _check_split_values(values: np.ndarray | None, n: int, config: ClusterConfig, name: str) -> np.ndarray | None:
    """int64 ``[n]`` split values, or None without ``config.split_by``; raises when one is given without the
    other, or on a bad shape or dtype."""
    if config.split_by is None:
        if values is not None:
            raise CompressionError(f"{name} given but ClusterConfig.split_by is None: set split_by to the "
                                   "categorical the values belong to")
        return None
    if values is None:
        raise CompressionError(f"ClusterConfig.split_by={config.split_by!r} needs {name}: the value of "
                               f"{config.split_by!r} for each behavior")
    v = np.asarray(values)
    if v.shape != (n,) or (n and not np.issubdtype(v.dtype, np.integer)):
        raise CompressionError(f"{name}: expected {n} integer codes (shape ({n},)), found shape {v.shape} and "
                               f"dtype {v.dtype}")
    return v.astype(np.int64, copy=False)


def cluster_life_cycle(embeddings: np.ndarray, completion_ratio: np.ndarray, config: ClusterConfig,
                       seed: int | np.random.Generator, split_values: np.ndarray | None = None) -> ClusterResult:
    """Cluster one user's behaviors within their completion groups (and split values, with ``split_by``).

    Args:
        embeddings: float32 ``[N, d]``, one row per behavior (float64 is read directly, other real dtypes
            are converted). Not modified.
        completion_ratio: ``[N]`` play completion ratio of each behavior (clipped to ``[0, 1]``).
        config: the clustering rule (method, gamma, groups, ...).
        seed: int or ``numpy`` generator; the only source of randomness.
        split_values: int ``[N]`` value of the categorical ``config.split_by`` for each behavior (required
            with ``split_by``, refused without it). Clusters then never mix two values; 0 (unknown) is a
            value like the others.

    Returns:
        :class:`ClusterResult` with ``labels`` int64 ``[N]``, and per cluster ``groups`` int8 ``[C]``,
        ``centroids`` float32 ``[C, d]`` (means of the normalised members), ``sizes`` int64 ``[C]`` and,
        with ``split_by``, ``values`` int64 ``[C]``. Clusters are numbered by group, then by value.

    Raises:
        EmbeddingError: ``embeddings`` is not 2-D, not real, or holds NaN/inf (count and rows named).
        CompressionError: ``completion_ratio`` or ``split_values`` has the wrong shape or NaN values, or
            ``seed`` is invalid.
    """
    if not isinstance(config, ClusterConfig):
        raise CompressionError(f"config: expected a ClusterConfig, found {type(config).__name__}")
    emb = _check_embeddings(embeddings)
    ratio = np.asarray(completion_ratio)
    if ratio.ndim != 1 or ratio.shape[0] != emb.shape[0]:
        raise CompressionError(f"completion_ratio has shape {ratio.shape} but embeddings has {emb.shape[0]} "
                               f"rows: expected shape ({emb.shape[0]},)")
    values = _check_split_values(split_values, emb.shape[0], config, "split_values")
    rng = _as_generator(seed)
    group_of_row = completion_groups(ratio, config)
    N, d = emb.shape
    # Stable sort by group (then by split value): the working copy holds each root set as one contiguous
    # block; perm[p] is the input row at position p, dest its inverse.
    if values is None:
        perm = np.argsort(group_of_row, kind="stable").astype(np.int64, copy=False)
    else:
        perm = np.lexsort((values, group_of_row)).astype(np.int64, copy=False)
    dest = np.empty(N, dtype=np.int64)
    dest[perm] = np.arange(N, dtype=np.int64)
    X, xsq = _prepare(emb, dest, config.normalize, "embeddings")
    group_sizes = np.bincount(group_of_row, minlength=config.num_groups).astype(np.int64)
    group_ends = np.cumsum(group_sizes)
    if values is None:
        group_starts = group_ends - group_sizes
        present = group_sizes > 0
        starts, ends = group_starts[present], group_ends[present]
    else:
        # Roots: the maximal runs of one (group, value) pair in sorted order.
        g_sorted, v_sorted = group_of_row[perm], values[perm]
        cuts = np.flatnonzero((g_sorted[1:] != g_sorted[:-1]) | (v_sorted[1:] != v_sorted[:-1])) + 1
        starts = np.concatenate([[0], cuts]).astype(np.int64) if N else np.zeros(0, np.int64)
        ends = np.concatenate([cuts, [N]]).astype(np.int64) if N else np.zeros(0, np.int64)
    order = np.arange(N, dtype=np.int64)
    if config.method == "flat":
        leaf_starts, leaf_ends, degenerate = _split_flat(X, xsq, order, starts, ends, config, rng)
    else:
        mode = kmeans.MODE_KMEANS if config.method == "hierarchical" else kmeans.MODE_RANDOM
        root_seeds = rng.integers(0, np.iinfo(np.uint64).max, size=starts.size, dtype=np.uint64, endpoint=True)
        leaf_s, leaf_e, degenerate, _ = kmeans.cluster_tree(X, xsq, order, starts, ends, root_seeds, config.gamma,
                                                            float(config.split_exponent), config.max_iter, mode)
        leaf_starts, leaf_ends = [leaf_s], [leaf_e]
    leaf_start = np.concatenate(leaf_starts) if leaf_starts else np.empty(0, dtype=np.int64)
    leaf_end = np.concatenate(leaf_ends) if leaf_ends else np.empty(0, dtype=np.int64)
    # Leaves tile [0, N); numbering them by position numbers them by group first.
    by_position = np.argsort(leaf_start, kind="stable")
    leaf_start, leaf_end = leaf_start[by_position], leaf_end[by_position]
    C = leaf_start.size
    centroids = np.empty((C, d), dtype=np.float32)
    kmeans.leaf_means(X, order, leaf_start, leaf_end, centroids)
    labels = np.empty(N, dtype=np.int64)
    kmeans.scatter_labels(perm, order, leaf_start, leaf_end, labels)
    groups = (np.searchsorted(group_ends, leaf_start, side="right")).astype(np.int8)
    leaf_values = None if values is None else values[perm[order[leaf_start]]]
    return ClusterResult(labels=labels, groups=groups, centroids=centroids,
                         sizes=(leaf_end - leaf_start).astype(np.int64), degenerate_splits=int(degenerate),
                         values=leaf_values)


def assign_incremental(centroids: np.ndarray, sizes: np.ndarray, groups: np.ndarray,
                       new_embeddings: np.ndarray, new_completion: np.ndarray, config: ClusterConfig,
                       new_groups: np.ndarray | None = None, values: np.ndarray | None = None,
                       new_values: np.ndarray | None = None) -> IncrementalResult:
    """Add behaviors newer than a clustering without re-clustering.

    New behaviors are taken in the given order (pass them oldest first). Each one, normalised like the
    full run, goes to the nearest centroid of its completion group (and, with ``config.split_by``, of its
    split value) when that cluster has fewer than ``gamma`` members (the centroid becomes the running mean
    of its members); otherwise, or when no cluster of its group (and value) exists, it opens a new cluster,
    appended after the existing ones. Inputs are not modified.

    Args:
        centroids: float32 ``[C, d]``; sizes: int ``[C]`` (>= 1); groups: int ``[C]`` in ``[0, num_groups)``.
        new_embeddings: ``[M, d]``; new_completion: ``[M]`` completion ratios.
        config: the configuration of the full run (gamma, groups, normalisation, split_by).
        new_groups: optional int ``[M]`` groups of the new rows. Required with ``group_bins="quantile"``,
            whose cuts depend on the user's full history, which the caller has and this function does not.
        values: int ``[C]`` split value of each existing cluster (the value of its representative, which
            every member shares); new_values: int ``[M]`` split value of each new row. Both required with
            ``config.split_by``, refused without it.

    Returns:
        :class:`IncrementalResult` (labels int64 ``[M]``, values >= C name new clusters; with ``split_by``
        also ``values`` int64 ``[C']``).

    Raises:
        EmbeddingError: wrong shapes, dimension mismatch with ``centroids``, NaN/inf values.
        CompressionError: inconsistent cluster state, completion or split-value arrays.
    """
    if not isinstance(config, ClusterConfig):
        raise CompressionError(f"config: expected a ClusterConfig, found {type(config).__name__}")
    cents = _check_embeddings(centroids, "centroids")
    C, d = cents.shape
    if not np.isfinite(cents).all():
        raise EmbeddingError("centroids: expected finite values, found NaN or inf")
    sizes_in = np.asarray(sizes)
    groups_in = np.asarray(groups)
    if sizes_in.shape != (C,) or groups_in.shape != (C,):
        raise CompressionError(f"sizes has shape {sizes_in.shape} and groups has shape {groups_in.shape}, "
                               f"expected ({C},) each to match centroids {cents.shape}")
    if C and (not np.issubdtype(sizes_in.dtype, np.integer) or sizes_in.min() < 1):
        raise CompressionError("sizes: expected integers >= 1 (every existing cluster has members)")
    if C and (not np.issubdtype(groups_in.dtype, np.integer) or groups_in.min() < 0
              or groups_in.max() >= config.num_groups):
        raise CompressionError(f"groups: expected integers in [0, {config.num_groups}), found values in "
                               f"[{groups_in.min()}, {groups_in.max()}]")
    emb = _check_embeddings(new_embeddings, "new_embeddings")
    M = emb.shape[0]
    if emb.shape[1] != d:
        raise EmbeddingError(f"new_embeddings has dimension {emb.shape[1]} but centroids have dimension {d}")
    ratio = np.asarray(new_completion)
    if ratio.ndim != 1 or ratio.shape[0] != M:
        raise CompressionError(f"new_completion has shape {ratio.shape} but new_embeddings has {M} rows: "
                               f"expected shape ({M},)")
    if new_groups is not None:
        gnew = np.asarray(new_groups)
        if gnew.shape != (M,) or not np.issubdtype(gnew.dtype, np.integer) or (
                M and (gnew.min() < 0 or gnew.max() >= config.num_groups)):
            raise CompressionError(f"new_groups: expected {M} integers in [0, {config.num_groups})")
        gnew = gnew.astype(np.int8)
    elif config.group_bins == "quantile":
        raise CompressionError("assign_incremental with group_bins='quantile' needs new_groups: the quantile "
                               "cuts come from the user's full history")
    else:
        gnew = completion_groups(ratio, config)
    old_values = _check_split_values(values, C, config, "values")
    vnew = _check_split_values(new_values, M, config, "new_values")
    Xnew, _ = _prepare(emb, np.arange(M, dtype=np.int64), config.normalize, "new_embeddings")
    out_centroids = np.empty((C + M, d), dtype=np.float32)
    out_centroids[:C] = cents
    out_sizes = np.empty(C + M, dtype=np.int64)
    out_sizes[:C] = sizes_in
    labels = np.empty(M, dtype=np.int64)
    if old_values is None or vnew is None:
        out_groups = np.empty(C + M, dtype=np.int8)
        out_groups[:C] = groups_in
        total = int(kmeans.incremental_assign(out_centroids, out_sizes, out_groups, C, Xnew, gnew,
                                              config.gamma, labels))
        return IncrementalResult(labels=labels, centroids=out_centroids[:total].copy(),
                                 sizes=out_sizes[:total].copy(), groups=out_groups[:total].copy(),
                                 num_new_clusters=total - C)
    # The kernel matches clusters by one integer key: (dense rank of the value, group).
    uniq, rank = np.unique(np.concatenate([old_values, vnew]), return_inverse=True)
    keys = rank.astype(np.int64) * config.num_groups + np.concatenate([groups_in.astype(np.int64),
                                                                       gnew.astype(np.int64)])
    out_keys = np.empty(C + M, dtype=np.int64)
    out_keys[:C] = keys[:C]
    total = int(kmeans.incremental_assign(out_centroids, out_sizes, out_keys, C, Xnew, keys[C:],
                                          config.gamma, labels))
    out_keys = out_keys[:total]
    return IncrementalResult(labels=labels, centroids=out_centroids[:total].copy(),
                             sizes=out_sizes[:total].copy(), groups=(out_keys % config.num_groups).astype(np.int8),
                             num_new_clusters=total - C, values=uniq[out_keys // config.num_groups])


def _reference_cluster_life_cycle(embeddings: np.ndarray, completion_ratio: np.ndarray,
                                  config: ClusterConfig, seed: int) -> ClusterResult:
    """Slow reference: recursive scikit-learn ``KMeans``, one call per split, under the same rules.

    Same groups, normalisation, size rule and degenerate guard as :func:`cluster_life_cycle`; each split
    is ``KMeans(k, init="k-means++", n_init=1, max_iter=config.max_iter, algorithm="lloyd")`` on the
    set's rows, depth first. Used by tests and ``benchmarks/compress_speed.py`` as the straightforward
    implementation to beat; scikit-learn is a development dependency, imported here only.
    """
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    emb = np.asarray(embeddings, dtype=np.float32)
    if config.normalize:
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = emb / np.where(norms > 0, norms, 1.0)
    group_of_row = completion_groups(completion_ratio, config)
    rng = np.random.default_rng(seed)
    leaves: list[np.ndarray] = []
    degenerate = 0
    for g in range(config.num_groups):
        stack = [np.flatnonzero(group_of_row == g)]
        while stack:
            members = stack.pop()
            n = members.size
            if n == 0:
                continue
            if n <= config.gamma:
                leaves.append(members)
                continue
            k = int(split_counts(np.array([n]), config.split_exponent)[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                km = KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=config.max_iter,
                            algorithm="lloyd", random_state=int(rng.integers(2**31 - 1))).fit(emb[members])
            parts = [members[km.labels_ == j] for j in range(k)]
            parts = [p for p in parts if p.size]
            if len(parts) < 2:
                degenerate += 1
                parts = [members[(t * n) // k:((t + 1) * n) // k] for t in range(k)]
            stack.extend(parts)
    labels = np.empty(len(group_of_row), dtype=np.int64)
    centroids = np.empty((len(leaves), emb.shape[1]), dtype=np.float32)
    groups = np.empty(len(leaves), dtype=np.int8)
    sizes = np.empty(len(leaves), dtype=np.int64)
    for c, members in enumerate(leaves):
        labels[members] = c
        centroids[c] = emb[members].mean(axis=0)
        groups[c] = group_of_row[members[0]]
        sizes[c] = members.size
    return ClusterResult(labels=labels, groups=groups, centroids=centroids, sizes=sizes,
                         degenerate_splits=degenerate)

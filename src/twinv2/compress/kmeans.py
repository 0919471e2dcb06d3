"""Compiled k-means kernels for life-cycle compression (numba, one thread, float32).

:mod:`twinv2.compress.cluster` orchestrates; these kernels do the arithmetic. They work on *positions*:
the caller copies the embedding matrix once into ``X`` (float32 ``[N, d]``, L2-normalised, rows sorted by
completion group), and a set of behaviors is a range ``[start, end)`` of the int64 array ``order`` whose
entries are rows of ``X``. Splitting a set permutes its slice of ``order`` so that every child is again a
contiguous range; the data itself never moves after that one copy.

:func:`cluster_tree` runs the *whole* recursion of all completion groups in one compiled call with an
explicit stack, so there is one Python -> compiled call per user instead of one per split (DESIGN §7: the
per-call overhead of tens of thousands of small k-means calls is what makes naive versions slow). It goes
depth first: once a subtree's members are in cache they stay there for all of its levels.

One split of a set of ``n`` members into ``k`` clusters:

* seeding: greedy k-means++ (each centre the best of ``SEED_TRIALS`` D²-sampled candidates) on a uniform
  subsample of ``min(n, SEED_SAMPLE_PER_CLUSTER * k)`` members: ``O(k² d)`` instead of ``O(n k d)``;
* fit: when ``n > TRAIN_SAMPLE_PER_CLUSTER * k``, Lloyd runs first on a uniform sample of that size, and
  the passes over all members start from the sampled fit. Each fit stops after ``max_iter`` passes or at
  a fixed point, and, for large sets (see ``SETTLED_*`` below), once a pass reassigns at most 2% of them;
* Lloyd passes use Hamerly's bounds (distance to the own centre, lower bound to any other), which skip a
  member without changing the result; distances are ``|x|² + |c|² - 2 x·c`` with four centres per sweep
  and a branch-free running minimum;
* degenerate guard: when fewer than two clusters are non-empty (all members identical, or a collapse),
  the set is split evenly into ``k`` contiguous chunks instead, so the recursion always shrinks.

The sampling and stopping constants trade a little leaf quality for speed; ``benchmarks/compress_speed.py``
measures both against recursive scikit-learn ``KMeans`` (on its synthetic users the mean squared distance
of members to their leaf centroid stays within 0.5% of the reference at 2·10^4, 10^5 and 10^6 behaviors).

Randomness: every set owns a splitmix64 stream. Roots (completion groups) are seeded by the caller's numpy
generator and every child's seed is drawn from its parent's stream, so results depend only on the caller's
seed, never on visiting order, threads or workers.

No input validation here: callers pass C-contiguous float32 matrices, int64 index arrays and consistent
ranges (``2 <= k <= end - start`` for a split).
"""

from __future__ import annotations

import time

import numpy as np
from numba import njit

__all__ = [
    "MODE_KMEANS",
    "MODE_RANDOM",
    "SEED_SAMPLE_PER_CLUSTER",
    "SEED_TRIALS",
    "SETTLED_FRACTION",
    "SETTLED_MIN_MEMBERS",
    "SETTLED_MIN_ROOT",
    "TRAIN_SAMPLE_PER_CLUSTER",
    "cluster_tree",
    "gather_normalize",
    "incremental_assign",
    "leaf_means",
    "lloyd_from_centers",
    "scatter_labels",
    "split_count",
    "split_level",
    "warmup",
]

MODE_KMEANS = 0  # split a set with k-means
MODE_RANDOM = 1  # split a set into k random, evenly sized parts (the paper's random-grouping ablation)

# Seeding sample per requested centre: enough candidates for D²-sampling to find well-separated seeds.
SEED_SAMPLE_PER_CLUSTER = 32
# Candidates per k-means++ centre (scikit-learn uses 2 + ln k). Measured: 3 instead of 1 lowers the mean
# squared leaf distance by ~1% at 2·10^4 behaviors; seeding on a subsample keeps it cheap.
SEED_TRIALS = 3
# Larger sets are fitted on a sample of this many members per centre first (faiss caps k-means training
# at 256 points per centroid by default for the same reason), then on all members.
TRAIN_SAMPLE_PER_CLUSTER = 64
# Early stop: a fit over a set of at least SETTLED_MIN_MEMBERS members also ends once a pass reassigns at
# most SETTLED_FRACTION of them; the last Lloyd passes move a few boundary members at the full cost of a
# pass each (measured at 10^6 behaviors: 1.5 s instead of 2.2 s for +0.1% leaf distance). The first split
# of a completion group gets it only from SETTLED_MIN_ROOT members: that split shapes a small user's whole
# tree (stopping it early cost 4% leaf distance at 2·10^4 behaviors), while for a heavy user it is the
# most expensive split of all.
SETTLED_FRACTION = 0.02
SETTLED_MIN_MEMBERS = 300
SETTLED_MIN_ROOT = 20000

# Small helpers are inlined at the numba level (inline="always"): calls between separately compiled numba
# functions are not inlined by LLVM and cost ~50 ns each, more than a 64-d distance.
# Arithmetic may be reassociated (so float32 dot products vectorise) but NaN/inf stay IEEE: the +inf
# sentinels of the distance search and the finiteness check of gather_normalize rely on it.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_FLOAT64_MAX = np.finfo(np.float64).max


# ----------------------------------------------------------------------------------------------------
# Random numbers: splitmix64, one stream per set.
# ----------------------------------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _next_u64(state):
    """Advance the splitmix64 ``state`` (uint64 ``[1]``) and return the next 64-bit value."""
    z = state[0] + np.uint64(0x9E3779B97F4A7C15)
    state[0] = z
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, inline="always")
def _uniform(state):
    """A float64 uniform in ``[0, 1)`` built from the top 53 bits."""
    return np.float64(_next_u64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, inline="always")
def _randbelow(state, n):
    """An int64 uniform in ``[0, n)``."""
    r = np.int64(_uniform(state) * n)
    return min(r, n - 1)


# ----------------------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _dots(X, row, C, k, out):
    """``out[j] = X[row] · C[j]`` for ``j < k``, four centres per sweep so each ``X`` value is loaded once."""
    d = X.shape[1]
    j = 0
    while j + 4 <= k:
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for t in range(d):
            x = X[row, t]
            a0 += x * C[j, t]
            a1 += x * C[j + 1, t]
            a2 += x * C[j + 2, t]
            a3 += x * C[j + 3, t]
        out[j] = a0
        out[j + 1] = a1
        out[j + 2] = a2
        out[j + 3] = a3
        j += 4
    while j < k:
        a0 = np.float32(0.0)
        for t in range(d):
            a0 += X[row, t] * C[j, t]
        out[j] = a0
        j += 1


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _nearest_two(X, row, xr, C, csq, k, dots):
    """Nearest centre among ``C[:k]`` to ``X[row]`` and the squared distances to the nearest two.

    The scan is branch-free (min/max/select): which centre wins is unpredictable on real data, and branch
    mispredictions cost more than the arithmetic (measured: 2x on the whole pass).
    """
    _dots(X, row, C, k, dots)
    b1 = np.float32(np.inf)
    b2 = np.float32(np.inf)
    a = 0
    for j in range(k):
        v = xr + csq[j] - np.float32(2.0) * dots[j]
        b2 = min(b2, max(v, b1))
        a = j if v < b1 else a
        b1 = min(v, b1)
    return a, max(b1, np.float32(0.0)), max(b2, np.float32(0.0))


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _sqdist(X, row, xsq_row, C, j, csq_j):
    """Squared distance between ``X[row]`` and ``C[j]`` via ``|x|² + |c|² - 2 x·c``, clipped at 0."""
    acc = np.float32(0.0)
    for t in range(X.shape[1]):
        acc += X[row, t] * C[j, t]
    v = xsq_row + csq_j - np.float32(2.0) * acc
    return max(v, np.float32(0.0))


@njit(cache=True, fastmath=_FASTMATH, inline="always")
def _sqdist_rows(X, row_a, xsq_a, row_b, xsq_b):
    """Squared distance between two rows of ``X``."""
    acc = np.float32(0.0)
    for t in range(X.shape[1]):
        acc += X[row_a, t] * X[row_b, t]
    v = xsq_a + xsq_b - np.float32(2.0) * acc
    return max(v, np.float32(0.0))


# ----------------------------------------------------------------------------------------------------
# Seeding: k-means++ on a subsample of the set
# ----------------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=_FASTMATH)
def _seed_centers(X, xsq, rows, m, k, n_trials, state, centers, csq, d2, trial_d2, best_d2):
    """Choose up to ``k`` seeds among the rows ``rows[:m]``; return how many were found.

    Each new seed is the best (lowest resulting potential) of ``n_trials`` D²-sampled candidates. Fewer
    than ``k`` come back only when every candidate coincides with a chosen seed (duplicates). Writes
    ``centers[:found]`` (float32 ``[k, d]``) and ``csq[:found]`` (their squared norms).
    """
    d = X.shape[1]
    first = rows[_randbelow(state, m)]
    for t in range(d):
        centers[0, t] = X[first, t]
    csq[0] = xsq[first]
    total = 0.0
    for q in range(m):
        row = rows[q]
        d2[q] = _sqdist(X, row, xsq[row], centers, 0, csq[0])
        total += d2[q]
    for c in range(1, k):
        if total <= 0.0:
            return c
        best_pot = np.inf
        best_q = -1
        for _ in range(n_trials):
            # D²-sampling: walk the cumulative sum to the drawn mass (never picking a zero-mass member).
            target = _uniform(state) * total
            acc = 0.0
            pick = -1
            for q in range(m):
                if d2[q] > 0.0:
                    pick = q
                    acc += d2[q]
                    if acc > target:
                        break
            cand = rows[pick]
            pot = 0.0
            for q in range(m):
                row = rows[q]
                v = min(d2[q], _sqdist_rows(X, row, xsq[row], cand, xsq[cand]))
                trial_d2[q] = v
                pot += v
            if pot < best_pot:
                best_pot = pot
                best_q = pick
                for q in range(m):
                    best_d2[q] = trial_d2[q]
        row = rows[best_q]
        for t in range(d):
            centers[c, t] = X[row, t]
        csq[c] = xsq[row]
        total = 0.0
        for q in range(m):
            d2[q] = best_d2[q]
            total += d2[q]
    return k


# ----------------------------------------------------------------------------------------------------
# Lloyd with Hamerly bounds
# ----------------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=_FASTMATH)
def _move_centers(centers, csq, sums, counts, k, shift):
    """Set each non-empty centre to its members' mean; ``shift[j]`` = distance it moved."""
    d = centers.shape[1]
    for j in range(k):
        if counts[j] == 0:
            shift[j] = 0.0  # an empty cluster keeps its centre
            continue
        inv = 1.0 / counts[j]
        moved = 0.0
        norm = 0.0
        for t in range(d):
            new = np.float32(sums[j, t] * inv)
            diff = np.float64(new) - np.float64(centers[j, t])
            moved += diff * diff
            centers[j, t] = new
            norm += np.float64(new) * np.float64(new)
        shift[j] = np.float32(np.sqrt(moved))
        csq[j] = np.float32(norm)


@njit(cache=True, fastmath=_FASTMATH)
def _half_separation(centers, k, half_sep):
    """``half_sep[j]`` = half the distance from centre ``j`` to its nearest other centre."""
    d = centers.shape[1]
    for j in range(k):
        half_sep[j] = np.inf
    for j in range(k):
        for j2 in range(j + 1, k):
            acc = np.float32(0.0)
            for t in range(d):
                diff = centers[j, t] - centers[j2, t]
                acc += diff * diff
            h = np.float32(0.5) * np.sqrt(acc)
            half_sep[j] = min(half_sep[j], h)
            half_sep[j2] = min(half_sep[j2], h)


@njit(cache=True, fastmath=_FASTMATH)
def _lloyd(X, xsq, rows, n, centers, csq, k, max_iter, settled, label, upper, lower, sums, counts, shift,
           half_sep, dots):
    """Lloyd's k-means on the rows ``rows[:n]`` from ``centers[:k]``; labels go to ``label[:n]``.

    Hamerly's bounds skip a member whose distance to its own centre (upper bound) is below both half the
    distance from that centre to the nearest other one and its lower bound to every other centre; bounds
    are loosened by how far centres move, so assignments equal plain Lloyd's. ``counts[:k]`` ends as the
    cluster sizes and ``centers`` as their means. Stops after ``max_iter`` assignment passes or once a
    pass changes at most ``settled`` labels (0: at a fixed point). Returns the number of passes.
    """
    d = X.shape[1]
    for j in range(k):
        counts[j] = 0
        for t in range(d):
            sums[j, t] = 0.0
    for p in range(n):  # pass 1: exact nearest and second-nearest distances for every member
        row = rows[p]
        a, b1, b2 = _nearest_two(X, row, xsq[row], centers, csq, k, dots)
        label[p] = a
        upper[p] = np.sqrt(b1)
        lower[p] = np.sqrt(b2)
        counts[a] += 1
        for t in range(d):
            sums[a, t] += X[row, t]
    changed = n
    passes = 1
    while True:
        _move_centers(centers, csq, sums, counts, k, shift)
        if changed <= settled or passes >= max_iter:
            break
        _half_separation(centers, k, half_sep)
        max1 = np.float32(-1.0)
        max2 = np.float32(-1.0)
        arg1 = -1
        for j in range(k):
            if shift[j] > max1:
                max2 = max1
                max1 = shift[j]
                arg1 = j
            elif shift[j] > max2:
                max2 = shift[j]
        changed = 0
        for p in range(n):
            a = label[p]
            upper[p] += shift[a]
            lower[p] -= max2 if a == arg1 else max1
            bound = max(half_sep[a], lower[p])
            if upper[p] <= bound:
                continue
            row = rows[p]
            xr = xsq[row]
            upper[p] = np.sqrt(_sqdist(X, row, xr, centers, a, csq[a]))
            if upper[p] <= bound:
                continue
            best, b1, b2 = _nearest_two(X, row, xr, centers, csq, k, dots)
            upper[p] = np.sqrt(b1)
            lower[p] = np.sqrt(b2)
            if best != a:
                changed += 1
                label[p] = best
                counts[a] -= 1
                counts[best] += 1
                for t in range(d):
                    x = X[row, t]
                    sums[a, t] -= x
                    sums[best, t] += x
        passes += 1
    return passes


# ----------------------------------------------------------------------------------------------------
# Splitting sets
# ----------------------------------------------------------------------------------------------------
@njit(cache=True)
def split_count(n, exponent):
    """Children of a split of ``n`` members: ``max(2, floor(n ** exponent))``, capped at ``n``.

    A 1e-9 slack keeps exact powers (``1024 ** 0.3`` evaluating to 7.9999999) on the intended side.
    """
    k = np.int64(np.floor(np.float64(n) ** exponent + 1e-9))
    return min(max(k, 2), n)


@njit(cache=True)
def _even_split(start, n, k, child_start, child_end, nc):
    """Append ``k`` contiguous chunks of ``[start, start+n)`` with sizes differing by at most one."""
    for t in range(k):
        child_start[nc] = start + (t * n) // k
        child_end[nc] = start + ((t + 1) * n) // k
        nc += 1
    return nc


@njit(cache=True)
def _buffers(nmax, kmax, d):
    """Scratch for splitting sets of up to ``nmax`` members into up to ``kmax`` clusters."""
    mmax = max(1, min(nmax, SEED_SAMPLE_PER_CLUSTER * kmax))
    return (np.empty((2, nmax), dtype=np.float32), np.empty((3, nmax), dtype=np.int64),
            np.empty(nmax, dtype=np.int32), np.empty((kmax, d), dtype=np.float32),
            np.empty(kmax, dtype=np.float32), np.empty((kmax, d), dtype=np.float64),
            np.empty(kmax, dtype=np.int64), np.empty(kmax, dtype=np.float32), np.empty(kmax, dtype=np.float32),
            np.empty(kmax, dtype=np.float32), np.empty(kmax + 1, dtype=np.int64),
            np.empty((3, mmax), dtype=np.float64))


@njit(cache=True, fastmath=_FASTMATH)
def _split_set(X, xsq, order, start, n, k, state, max_iter, mode, root, ws_f32, ws_i64, label, centers, csq, sums,
               counts, shift, half_sep, dots, offsets, d2, child_start, child_end, nc):
    """Split ``order[start:start+n]`` into at most ``k`` children, appended to ``child_*`` from ``nc``.

    ``root``: the set is a whole completion group (its early stop needs ``SETTLED_MIN_ROOT`` members).
    Scratch comes from :func:`_buffers`. Returns ``(new nc, 1 if degenerate else 0, Lloyd passes)``.
    """
    if mode == MODE_RANDOM:
        for p in range(n - 1, 0, -1):  # Fisher-Yates shuffle of the set's slice
            r = _randbelow(state, p + 1)
            t0 = order[start + p]
            order[start + p] = order[start + r]
            order[start + r] = t0
        return _even_split(start, n, k, child_start, child_end, nc), 0, 0
    upper = ws_f32[0]
    lower = ws_f32[1]
    tmp = ws_i64[0]
    positions = ws_i64[1]
    sample = ws_i64[2]
    m_seed = min(n, SEED_SAMPLE_PER_CLUSTER * k)
    m_train = min(n, TRAIN_SAMPLE_PER_CLUSTER * k)
    m_sample = max(m_seed, m_train) if m_train < n else m_seed
    # Uniform sample of m_sample members (partial Fisher-Yates over positions); its first m_seed rows are
    # themselves a uniform sample, used for seeding.
    for q in range(n):
        positions[q] = q
    for q in range(m_sample):
        r = q + _randbelow(state, n - q)
        t0 = positions[q]
        positions[q] = positions[r]
        positions[r] = t0
        sample[q] = order[start + positions[q]]
    found = _seed_centers(X, xsq, sample, m_seed, k, SEED_TRIALS, state, centers, csq, d2[0], d2[1], d2[2])
    members = order[start:start + n]
    tol = SETTLED_FRACTION if n >= (SETTLED_MIN_ROOT if root else SETTLED_MIN_MEMBERS) else 0.0
    nonempty = 0
    passes = 0
    if found >= 2:
        if m_train < n:
            passes += _lloyd(X, xsq, sample, m_train, centers, csq, found, max_iter, np.int64(tol * m_train),
                             label, upper, lower, sums, counts, shift, half_sep, dots)
        passes += _lloyd(X, xsq, members, n, centers, csq, found, max_iter, np.int64(tol * n), label, upper,
                         lower, sums, counts, shift, half_sep, dots)
        for j in range(found):
            if counts[j] > 0:
                nonempty += 1
    if nonempty < 2:
        return _even_split(start, n, k, child_start, child_end, nc), 1, passes
    # Stable counting sort of the slice by label: each cluster becomes a contiguous child range.
    offsets[0] = 0
    for j in range(found):
        offsets[j + 1] = offsets[j] + counts[j]
    for j in range(found):
        if counts[j] > 0:
            child_start[nc] = start + offsets[j]
            child_end[nc] = start + offsets[j + 1]
            nc += 1
    for p in range(n):
        j = label[p]
        tmp[offsets[j]] = members[p]
        offsets[j] += 1
    for p in range(n):
        members[p] = tmp[p]
    return nc, 0, passes


@njit(cache=True, fastmath=_FASTMATH)
def split_level(X, xsq, order, set_start, set_end, set_k, set_seed, max_iter, mode, child_start, child_end):
    """Split every set ``[set_start[s], set_end[s])`` of ``order`` once, into at most ``set_k[s]`` children.

    Used by flat k-means (one split per completion group; children are final whatever their size).

    Args:
        X: float32 ``[N, d]`` working matrix (normalised, group-sorted); ``xsq``: float32 ``[N]`` row norms².
        order: int64 ``[N]`` rows of ``X``; each set's slice is permuted in place so children are ranges.
        set_start, set_end, set_k: int64 ``[S]``; ``2 <= set_k[s] <= set_end[s] - set_start[s]``.
        set_seed: uint64 ``[S]`` one random stream per set.
        max_iter: Lloyd assignment passes per fit. mode: ``MODE_KMEANS`` or ``MODE_RANDOM``.
        child_start, child_end: int64 ``[sum(set_k)]`` outputs, children of set 0 first, then set 1, ...

    Returns:
        ``(num_children, num_degenerate, lloyd_passes)``.
    """
    S = set_start.shape[0]
    kmax = 2
    nmax = 1
    for s in range(S):
        kmax = max(kmax, set_k[s])
        nmax = max(nmax, set_end[s] - set_start[s])
    (ws_f32, ws_i64, label, centers, csq, sums, counts, shift, half_sep, dots, offsets,
     d2) = _buffers(nmax, kmax, X.shape[1])
    state = np.empty(1, dtype=np.uint64)
    nc = 0
    degenerate = 0
    passes = 0
    for s in range(S):
        state[0] = set_seed[s]
        nc, deg, p = _split_set(X, xsq, order, set_start[s], set_end[s] - set_start[s], set_k[s], state,
                                max_iter, mode, True, ws_f32, ws_i64, label, centers, csq, sums, counts,
                                shift, half_sep, dots, offsets, d2, child_start, child_end, nc)
        degenerate += deg
        passes += p
    return nc, degenerate, passes


@njit(cache=True)
def _grow(a, used, cap):
    """A copy of ``a[:used]`` in a new array of length ``cap``."""
    out = np.empty(cap, dtype=a.dtype)
    out[:used] = a[:used]
    return out


@njit(cache=True, fastmath=_FASTMATH)
def cluster_tree(X, xsq, order, root_start, root_end, root_seed, gamma, exponent, max_iter, mode):
    """Split every root set recursively until all parts have at most ``gamma`` members.

    A set of ``n > gamma`` members is split into ``split_count(n, exponent)`` children (k-means or random,
    per ``mode``); parts of at most ``gamma`` members are final. Depth first, with an explicit stack.

    Args:
        X, xsq, order: as in :func:`split_level`; ``order`` is permuted so that every leaf is a range.
        root_start, root_end: int64 ``[R]`` disjoint root ranges (the completion groups), non-empty.
        root_seed: uint64 ``[R]``; each child's seed is drawn from its parent's stream.
        gamma: largest final part; exponent: split exponent; max_iter: Lloyd passes per fit.

    Returns:
        ``(leaf_start, leaf_end, num_degenerate, lloyd_passes)``: int64 leaf ranges in visiting order,
        splits that fell back to an even partition, and Lloyd assignment passes made in total.
    """
    R = root_start.shape[0]
    nmax = 2
    total = 0
    for r in range(R):
        nmax = max(nmax, root_end[r] - root_start[r])
        total += root_end[r] - root_start[r]
    kmax = split_count(nmax, exponent)
    (ws_f32, ws_i64, label, centers, csq, sums, counts, shift, half_sep, dots, offsets,
     d2) = _buffers(nmax, kmax, X.shape[1])
    child_start = np.empty(kmax, dtype=np.int64)
    child_end = np.empty(kmax, dtype=np.int64)
    leaf_start = np.empty(max(total, 1), dtype=np.int64)  # every leaf holds at least one member
    leaf_end = np.empty(max(total, 1), dtype=np.int64)
    num_leaves = 0
    cap = 64 + R
    stack_start = np.empty(cap, dtype=np.int64)
    stack_end = np.empty(cap, dtype=np.int64)
    stack_seed = np.empty(cap, dtype=np.uint64)
    stack_depth = np.empty(cap, dtype=np.int64)
    top = 0
    for r in range(R - 1, -1, -1):  # pushed in reverse so the first root is visited first
        stack_start[top] = root_start[r]
        stack_end[top] = root_end[r]
        stack_seed[top] = root_seed[r]
        stack_depth[top] = 0
        top += 1
    state = np.empty(1, dtype=np.uint64)
    degenerate = 0
    passes = 0
    while top > 0:
        top -= 1
        start = stack_start[top]
        n = stack_end[top] - start
        if n <= gamma:
            leaf_start[num_leaves] = start
            leaf_end[num_leaves] = start + n
            num_leaves += 1
            continue
        state[0] = stack_seed[top]
        depth = stack_depth[top]
        k = split_count(n, exponent)
        nc, deg, p = _split_set(X, xsq, order, start, n, k, state, max_iter, mode, depth == 0, ws_f32, ws_i64,
                                label, centers, csq, sums, counts, shift, half_sep, dots, offsets, d2,
                                child_start, child_end, 0)
        degenerate += deg
        passes += p
        if top + nc > cap:
            cap = 2 * (top + nc)
            stack_start = _grow(stack_start, top, cap)
            stack_end = _grow(stack_end, top, cap)
            stack_seed = _grow(stack_seed, top, cap)
            stack_depth = _grow(stack_depth, top, cap)
        for c in range(nc - 1, -1, -1):  # pushed in reverse so the first child is visited first
            stack_start[top] = child_start[c]
            stack_end[top] = child_end[c]
            stack_seed[top] = _next_u64(state)
            stack_depth[top] = depth + 1
            top += 1
    return leaf_start[:num_leaves].copy(), leaf_end[:num_leaves].copy(), degenerate, passes


# ----------------------------------------------------------------------------------------------------
# Whole-matrix passes: preparation, final centroids, labels
# ----------------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=_FASTMATH)
def gather_normalize(E, dest, normalize, out, xsq, bad_rows):
    """Copy row ``i`` of ``E`` to row ``dest[i]`` of ``out`` (float32 ``[N, d]``), L2-normalised if asked.

    Reads ``E`` sequentially; with ``dest`` ascending within each completion group, the writes form one
    sequential stream per group, so both sides stream through memory. ``xsq`` (float32 ``[N]``, indexed
    like ``out``) receives the squared norms of the written rows. Zero rows stay zero. Rows holding NaN or
    inf are not written; the first ``len(bad_rows)`` of their indices go to ``bad_rows``. Returns how many
    rows were non-finite.
    """
    N, d = E.shape
    bad = 0
    for i in range(N):
        s = 0.0
        for t in range(d):
            v = np.float64(E[i, t])
            s += v * v
        # NaN and inf survive the sum of squares (no nnan/ninf fast-math), so one check covers the row. It
        # is a comparison on purpose: under nsz+reassoc LLVM folds np.isfinite(s) to true (measured).
        if not s <= _FLOAT64_MAX:
            if bad < bad_rows.shape[0]:
                bad_rows[bad] = i
            bad += 1
            continue
        scale = 1.0 / np.sqrt(s) if (normalize and s > 0.0) else 1.0
        p = dest[i]
        acc = np.float32(0.0)
        for t in range(d):
            w = np.float32(E[i, t] * scale)
            out[p, t] = w
            acc += w * w
        xsq[p] = acc
    return bad


@njit(cache=True, fastmath=_FASTMATH)
def leaf_means(X, order, leaf_start, leaf_end, out):
    """``out[c]`` = mean of rows ``X[order[leaf_start[c]:leaf_end[c]]]`` (float64 sums, float32 out)."""
    d = X.shape[1]
    acc = np.empty(d, dtype=np.float64)
    for c in range(leaf_start.shape[0]):
        for t in range(d):
            acc[t] = 0.0
        a = leaf_start[c]
        b = leaf_end[c]
        for p in range(a, b):
            row = order[p]
            for t in range(d):
                acc[t] += X[row, t]
        inv = 1.0 / (b - a)
        for t in range(d):
            out[c, t] = np.float32(acc[t] * inv)


@njit(cache=True)
def scatter_labels(perm, order, leaf_start, leaf_end, labels):
    """``labels[perm[order[p]]] = c`` for every position ``p`` of leaf ``c`` (input-row cluster ids)."""
    for c in range(leaf_start.shape[0]):
        for p in range(leaf_start[c], leaf_end[c]):
            labels[perm[order[p]]] = c


# ----------------------------------------------------------------------------------------------------
# Incremental assignment
# ----------------------------------------------------------------------------------------------------
@njit(cache=True, fastmath=_FASTMATH)
def incremental_assign(centroids, sizes, groups, num_clusters, Xnew, gnew, gamma, labels):
    """Assign new rows one by one to the nearest cluster of their group, or open a new cluster.

    ``centroids`` (float32 ``[C + M, d]``), ``sizes`` (int64) and ``groups`` (int8) hold the
    ``num_clusters`` existing clusters in their first rows and have room for ``M`` more. Row ``i`` of
    ``Xnew`` (float32 ``[M, d]``, group ``gnew[i]``) joins the nearest centroid of its group when that
    cluster has fewer than ``gamma`` members (the centroid becomes the running mean), else it opens a new
    cluster at the end. Clusters opened earlier in the same call take part. ``labels`` (int64 ``[M]``)
    receives the cluster of each row. Returns the new number of clusters. ``groups`` and ``gnew`` may be
    any integer keys of one dtype (the caller passes int64 (split value, group) keys with ``split_by``).
    """
    M, d = Xnew.shape
    nc = num_clusters
    for i in range(M):
        g = gnew[i]
        best = np.inf
        bj = -1
        for j in range(nc):
            if groups[j] != g:
                continue
            acc = np.float32(0.0)
            for t in range(d):
                diff = Xnew[i, t] - centroids[j, t]
                acc += diff * diff
            if acc < best:
                best = acc
                bj = j
        if bj >= 0 and sizes[bj] < gamma:
            inv = 1.0 / (sizes[bj] + 1)
            for t in range(d):
                c = np.float64(centroids[bj, t])
                centroids[bj, t] = np.float32(c + (np.float64(Xnew[i, t]) - c) * inv)
            sizes[bj] += 1
            labels[i] = bj
        else:
            for t in range(d):
                centroids[nc, t] = Xnew[i, t]
            sizes[nc] = 1
            groups[nc] = g
            labels[i] = nc
            nc += 1
    return nc


# ----------------------------------------------------------------------------------------------------
# Entry points for tests and benchmarks
# ----------------------------------------------------------------------------------------------------
@njit(cache=True)
def lloyd_from_centers(X, init_centers, max_iter):
    """Lloyd's k-means on all rows of ``X`` (float32 ``[n, d]``) from ``init_centers`` (float32 ``[k, d]``).

    The compiled fit every split uses (Hamerly's bounds, no early stop), exposed so tests can compare it
    with a plain NumPy Lloyd. Returns ``(labels int32 [n], centers float32 [k, d], passes)``.
    """
    n, d = X.shape
    k = init_centers.shape[0]
    rows = np.arange(n)
    xsq = np.empty(n, dtype=np.float32)
    for i in range(n):
        acc = np.float32(0.0)
        for t in range(d):
            acc += X[i, t] * X[i, t]
        xsq[i] = acc
    centers = init_centers.copy()
    csq = np.empty(k, dtype=np.float32)
    for j in range(k):
        acc = np.float32(0.0)
        for t in range(d):
            acc += centers[j, t] * centers[j, t]
        csq[j] = acc
    label = np.empty(n, dtype=np.int32)
    upper = np.empty(n, dtype=np.float32)
    sums = np.empty((k, d), dtype=np.float64)
    counts = np.empty(k, dtype=np.int64)
    shift = np.empty(k, dtype=np.float32)
    dots = np.empty(k, dtype=np.float32)
    passes = _lloyd(X, xsq, rows, n, centers, csq, k, max_iter, 0.0, label, upper, np.empty(n, dtype=np.float32),
                    sums, counts, shift, np.empty(k, dtype=np.float32), dots)
    return label, centers, passes


def warmup() -> float:
    """Compile (or load from numba's on-disk cache) every kernel on a tiny input; return the seconds spent.

    Benchmarks call this before timing so that JIT compilation is reported separately.
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    E = rng.standard_normal((64, 4)).astype(np.float32)
    dest = np.arange(64, dtype=np.int64)
    X = np.empty_like(E)
    xsq = np.empty(64, dtype=np.float32)
    gather_normalize(E, dest, True, X, xsq, np.empty(5, dtype=np.int64))
    gather_normalize(E.astype(np.float64), dest, True, X, xsq, np.empty(5, dtype=np.int64))
    order = np.arange(64, dtype=np.int64)
    starts = np.array([0], dtype=np.int64)
    ends = np.array([64], dtype=np.int64)
    seeds = np.array([1], dtype=np.uint64)
    cs = np.empty(3, dtype=np.int64)
    ce = np.empty(3, dtype=np.int64)
    for mode in (MODE_KMEANS, MODE_RANDOM):
        split_level(X, xsq, order, starts, ends, np.array([3], dtype=np.int64), seeds, 5, mode, cs, ce)
        cluster_tree(X, xsq, order, starts, ends, seeds, 8, 0.3, 5, mode)
    out = np.empty((1, 4), dtype=np.float32)
    leaf_means(X, order, starts, ends, out)
    scatter_labels(dest, order, starts, ends, np.empty(64, dtype=np.int64))
    cents = np.zeros((4, 4), dtype=np.float32)
    for key_type in (np.int8, np.int64):  # completion groups; (split value, group) keys with split_by
        incremental_assign(cents.copy(), np.ones(4, dtype=np.int64), np.zeros(4, dtype=key_type), 1, X[:3],
                           np.zeros(3, dtype=key_type), 20, np.empty(3, dtype=np.int64))
    lloyd_from_centers(X, X[:2].copy(), 5)
    return time.perf_counter() - t0

"""Virtual items: one row per cluster summarising its member behaviors (DESIGN §2.2, point 2).

Numeric features are means over the members; categorical features come from the representative item, the
member closest to the cluster centroid (so the cached projection of a real item serves the virtual item);
plus the size n and the first, last and mean member timestamps.

These are pure functions over one user's arrays; the job (:mod:`twinv2.compress.job`) feeds them. They do
no input validation: the job validated the embeddings and features before calling them.
"""

from __future__ import annotations

import numpy as np

from twinv2.compress.store import GAP_FEATURE, Columns

__all__ = [
    "build_virtual_items",
    "canonical_order",
    "normalize_rows",
    "sort_by_recency",
    "update_virtual_items",
]


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """float32 ``[N, d]`` rows scaled to unit L2 norm (callers have rejected zero rows)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    return x / norms[:, None]


def canonical_order(ts: np.ndarray, item_id: np.ndarray, label: np.ndarray,
                    cross: list[np.ndarray]) -> np.ndarray:
    """Permutation sorting one user's behaviors by ``(ts, item_id, label, cross...)``.

    Real data has timestamp ties, and engines (Spark) do not keep file order inside a group; sorting ties
    by the row's content makes every backend see the same sequence, so results agree bit for bit. Rows
    equal in every key are interchangeable. Returns int64 ``[N]``.
    """
    keys = [*reversed(cross), label, item_id, ts]  # np.lexsort: the last key is the primary one
    return np.lexsort(keys)


def build_virtual_items(user_id: int, labels: np.ndarray, groups: np.ndarray, x: np.ndarray,
                        item_id: np.ndarray, ts: np.ndarray, features: dict[str, np.ndarray],
                        snapshot_ts: int) -> Columns:
    """Virtual items of one user's clusters, in cluster-index order.

    Args:
        user_id: the user.
        labels: int64 ``[N]`` cluster of each behavior, every cluster ``0..C-1`` non-empty.
        groups: int8 ``[C]`` completion group of each cluster.
        x: float32 ``[N, d]`` the clustered (normalised) embeddings of the behaviors.
        item_id, ts: int64 ``[N]`` per behavior.
        features: per-behavior values ``[N]`` keyed by feature name (every name of
            :func:`twinv2.compress.store.mean_feature_names` except ``gap_to_snapshot``).
        snapshot_ts: the snapshot; ``mean_gap_to_snapshot = snapshot_ts - mean_ts``.
    Returns:
        Part columns (see :mod:`twinv2.compress.store`) with ``C`` rows; ``centroid`` is float32 ``[C, d]``.
    """
    num_clusters = len(groups)
    sizes = np.bincount(labels, minlength=num_clusters)
    if len(sizes) != num_clusters or (sizes == 0).any():
        raise RuntimeError(f"cluster labels must cover 0..{num_clusters - 1} with no empty cluster")
    order = np.argsort(labels, kind="stable")                   # members grouped by cluster, in row order
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    # float64 sums: exact enough for huge flat clusters, and the same on every backend.
    centroid = (np.add.reduceat(x[order], starts, axis=0, dtype=np.float64) / sizes[:, None]).astype(np.float32)
    diff = x - centroid[labels]                                 # [N, d]
    dist2 = np.einsum("ij,ij->i", diff, diff)                   # [N] squared distance to own centroid
    # Representative: the member closest to the centroid; ties go to the earliest behavior.
    by_distance = np.lexsort((np.arange(len(labels)), dist2, labels))
    rep_rows = by_distance[starts]
    ts_grouped = ts[order]

    def mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(labels, weights=values.astype(np.float64), minlength=num_clusters) / sizes

    mean_ts = mean(ts)
    out: Columns = {
        "user_id": np.full(num_clusters, user_id, dtype=np.int64),
        "rep_item_id": item_id[rep_rows].astype(np.int64),
        "cluster_size": sizes.astype(np.int64),
        "completion_group": np.asarray(groups, dtype=np.int8),
        "first_ts": np.minimum.reduceat(ts_grouped, starts).astype(np.int64),
        "last_ts": np.maximum.reduceat(ts_grouped, starts).astype(np.int64),
        "mean_ts": mean_ts,
    }
    for name, values in features.items():
        out[f"mean_{name}"] = mean(values).astype(np.float32)
    out[f"mean_{GAP_FEATURE}"] = (snapshot_ts - mean_ts).astype(np.float32)
    out["mean_sq_dist"] = mean(dist2).astype(np.float32)
    out["centroid"] = centroid
    return out


def update_virtual_items(user_id: int, old: Columns, labels: np.ndarray, groups: np.ndarray, sizes: np.ndarray,
                         x_new: np.ndarray, rep_x_old: np.ndarray, item_id_new: np.ndarray,
                         ts_new: np.ndarray, features_new: dict[str, np.ndarray], snapshot_ts: int) -> Columns:
    """Fold new behaviors into a user's existing virtual items (running means, DESIGN §2.3).

    Args:
        user_id: the user.
        old: the user's ``C`` existing rows (any order), with ``centroid`` float32 ``[C, d]``.
        labels: int64 ``[M]`` cluster of each new behavior; values ``>= C`` are new clusters.
        groups: int8 ``[C']`` and sizes: int64 ``[C']``: the state after the update (from
            :func:`twinv2.compress.cluster.assign_incremental`), ``C' >= C``.
        x_new: float32 ``[M, d]`` normalised embeddings of the new behaviors.
        rep_x_old: float32 ``[C, d]`` normalised embeddings of the old representatives.
        item_id_new, ts_new: int64 ``[M]``; features_new: ``[M]`` values per feature name.
        snapshot_ts: the new snapshot.
    Returns:
        ``C'`` rows: rows ``0..C-1`` are the old clusters in input order, then the new ones.

    Means, the centroid and the mean squared distance are updated exactly (up to float rounding) from the
    stored means and sizes. The members of old clusters are not stored, so the representative becomes the
    closest to the new centroid among the old representative and the new members.
    """
    num_old, num_all = len(old["rep_item_id"]), len(groups)
    n_old = np.zeros(num_all, np.int64)
    n_old[:num_old] = old["cluster_size"]
    added = np.bincount(labels, minlength=num_all)
    n = n_old + added
    if len(added) != num_all or not np.array_equal(n, np.asarray(sizes)):
        raise RuntimeError("incremental assignment sizes disagree with the old sizes plus new members")

    def updated_mean(old_mean: np.ndarray, new_values: np.ndarray) -> np.ndarray:
        total = np.zeros(num_all, np.float64)
        total[:num_old] = old_mean.astype(np.float64) * n_old[:num_old]
        total += np.bincount(labels, weights=new_values.astype(np.float64), minlength=num_all)
        return total / n

    mean_ts = updated_mean(old["mean_ts"], ts_new)
    first_ts = np.full(num_all, np.iinfo(np.int64).max, np.int64)
    last_ts = np.full(num_all, np.iinfo(np.int64).min, np.int64)
    first_ts[:num_old], last_ts[:num_old] = old["first_ts"], old["last_ts"]
    np.minimum.at(first_ts, labels, ts_new)
    np.maximum.at(last_ts, labels, ts_new)

    dim = x_new.shape[1]
    c_old = np.asarray(old["centroid"], np.float64).reshape(num_old, dim)
    sum_x = np.zeros((num_all, dim), np.float64)
    sum_x[:num_old] = c_old * n_old[:num_old, None]
    np.add.at(sum_x, labels, x_new.astype(np.float64))
    centroid = sum_x / n[:, None]
    # E|x|^2 per cluster, from the stored mean squared distance: msd = E|x|^2 - |c|^2.
    sq_norm_sum = np.zeros(num_all, np.float64)
    sq_norm_sum[:num_old] = (old["mean_sq_dist"].astype(np.float64) + (c_old**2).sum(1)) * n_old[:num_old]
    sq_norm_sum += np.bincount(labels, weights=(x_new.astype(np.float64) ** 2).sum(1), minlength=num_all)
    mean_sq_dist = np.maximum(sq_norm_sum / n - (centroid**2).sum(1), 0.0)

    centroid32 = centroid.astype(np.float32)
    cand_cluster = np.concatenate([np.arange(num_old, dtype=np.int64), labels.astype(np.int64)])
    cand_x = np.concatenate([rep_x_old.astype(np.float32), x_new.astype(np.float32)])
    cand_item = np.concatenate([old["rep_item_id"], item_id_new]).astype(np.int64)
    diff = cand_x - centroid32[cand_cluster]
    dist2 = np.einsum("ij,ij->i", diff, diff)
    by_distance = np.lexsort((np.arange(len(cand_cluster)), dist2, cand_cluster))
    first_candidate = np.searchsorted(cand_cluster[by_distance], np.arange(num_all))

    out: Columns = {
        "user_id": np.full(num_all, user_id, np.int64),
        "rep_item_id": cand_item[by_distance[first_candidate]],
        "cluster_size": n.astype(np.int64),
        "completion_group": np.asarray(groups, dtype=np.int8),
        "first_ts": first_ts,
        "last_ts": last_ts,
        "mean_ts": mean_ts,
    }
    for name, values in features_new.items():
        out[f"mean_{name}"] = updated_mean(old[f"mean_{name}"], values).astype(np.float32)
    out[f"mean_{GAP_FEATURE}"] = (snapshot_ts - mean_ts).astype(np.float32)
    out["mean_sq_dist"] = mean_sq_dist.astype(np.float32)
    out["centroid"] = centroid32
    return out


def sort_by_recency(columns: Columns) -> Columns:
    """Rows ordered by ``last_ts`` ascending (most recent last), ties by ``first_ts`` then input order."""
    n = len(columns["last_ts"])
    order = np.lexsort((np.arange(n), columns["first_ts"], columns["last_ts"]))
    return {name: values[order] for name, values in columns.items()}

"""Virtual items: one row per cluster summarising its member behaviors (DESIGN §2.2, point 2).

Numeric features are means over the members; categorical features come from the representative item, the
member closest to the cluster centroid (so the cached projection of a real item serves the virtual item);
plus the size n and the first, last and mean member timestamps. Given the members' values of the dataset's
inherent categoricals, each virtual item also records, per categorical, how well one value describes its
members (:func:`member_value_counts`): the share of members holding the cluster's most frequent value
(``majority_share_<name>``) and the share holding the representative's value (``rep_share_<name>``).

These are pure functions over one user's arrays; the job (:mod:`twinv2.compress.job`) feeds them. They do
no input validation: the job validated the embeddings and features before calling them.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from twinv2.compress.store import GAP_FEATURE, Columns, share_columns

__all__ = [
    "build_virtual_items",
    "canonical_order",
    "member_value_counts",
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


def member_value_counts(labels: np.ndarray, values: np.ndarray, rep_value: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster, how many members hold its most frequent value and how many hold ``rep_value``.

    Args:
        labels: int ``[N]`` cluster of each member, in ``[0, C)``.
        values: int ``[N]`` categorical code of each member.
        rep_value: int ``[C]`` the value to count per cluster (its representative's).
    Returns:
        ``(majority_count, rep_count)``, int64 ``[C]`` each (0 for a cluster without members). One sort of
        ``N`` integer keys: about 5 ms per 10^5 members.
    """
    num_clusters = len(rep_value)
    majority = np.zeros(num_clusters, np.int64)
    rep = np.zeros(num_clusters, np.int64)
    if len(labels) == 0:
        return majority, rep
    labels = np.asarray(labels, np.int64)
    values = np.asarray(values, np.int64)
    lo = int(values.min())
    span = int(values.max()) - lo + 1
    if num_clusters * span < 2**62:  # one sort of packed (label, value) keys
        key = np.sort(labels * span + (values - lo))
        new_run = np.concatenate([[True], key[1:] != key[:-1]])
        starts = np.flatnonzero(new_run)
        run_label, run_value = key[starts] // span, key[starts] % span + lo
    else:
        order = np.lexsort((values, labels))
        sl, sv = labels[order], values[order]
        starts = np.flatnonzero(np.concatenate([[True], (sl[1:] != sl[:-1]) | (sv[1:] != sv[:-1])]))
        run_label, run_value = sl[starts], sv[starts]
    lengths = np.diff(np.append(starts, len(labels)))
    first = np.flatnonzero(np.concatenate([[True], run_label[1:] != run_label[:-1]]))
    majority[run_label[first]] = np.maximum.reduceat(lengths, first)
    hit = run_value == np.asarray(rep_value, np.int64)[run_label]
    rep[run_label[hit]] = lengths[hit]  # a (label, value) pair is one run
    return majority, rep


def _shares(out: Columns, name: str, majority: np.ndarray, rep: np.ndarray) -> None:
    majority_col, rep_col = share_columns(name)
    out[majority_col] = majority.astype(np.float32)
    out[rep_col] = rep.astype(np.float32)


def build_virtual_items(user_id: int, labels: np.ndarray, groups: np.ndarray, x: np.ndarray,
                        item_id: np.ndarray, ts: np.ndarray, features: dict[str, np.ndarray],
                        snapshot_ts: int, categoricals: dict[str, np.ndarray] | None = None) -> Columns:
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
        categoricals: optional int ``[N]`` codes per inherent categorical name: adds the float32 ``[C]``
            columns ``majority_share_<name>`` and ``rep_share_<name>`` (see :func:`member_value_counts`).
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
    for name, values in (categoricals or {}).items():
        majority, rep = member_value_counts(labels, values, values[rep_rows])
        _shares(out, name, majority / sizes, rep / sizes)
    return out


def update_virtual_items(user_id: int, old: Columns, labels: np.ndarray, groups: np.ndarray, sizes: np.ndarray,
                         x_new: np.ndarray, rep_x_old: np.ndarray, item_id_new: np.ndarray,
                         ts_new: np.ndarray, features_new: dict[str, np.ndarray], snapshot_ts: int,
                         categoricals_new: dict[str, np.ndarray] | None = None, pure: Collection[str] = ()
                         ) -> Columns:
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
        categoricals_new: optional int ``[M]`` codes of the new behaviors per inherent categorical: adds the
            ``majority_share_<name>`` and ``rep_share_<name>`` float32 ``[C']`` columns.
        pure: names of categoricals no cluster mixes (the ``split_by`` categorical): both shares are 1.
    Returns:
        ``C'`` rows: rows ``0..C-1`` are the old clusters in input order, then the new ones.

    Means, the centroid and the mean squared distance are updated exactly (up to float rounding) from the
    stored means and sizes. The members of old clusters are not stored, so the representative becomes the
    closest to the new centroid among the old representative and the new members. For the same reason the
    member shares are exact for new clusters and for old clusters that received no new member (their old
    values are kept, NaN if ``old`` lacks them), and NaN (unknown) for old clusters that grew.
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
    rep_candidate = by_distance[first_candidate]  # [C'] candidate index: < C an old rep, else C + new row

    out: Columns = {
        "user_id": np.full(num_all, user_id, np.int64),
        "rep_item_id": cand_item[rep_candidate],
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
    if categoricals_new is not None:
        grown = added[:num_old] > 0
        in_new = labels >= num_old
        for name, values in categoricals_new.items():
            majority_col, rep_col = share_columns(name)
            majority = np.full(num_all, np.nan, np.float64)
            rep = np.full(num_all, np.nan, np.float64)
            if name in pure:
                majority[:], rep[:] = 1.0, 1.0
            else:
                if majority_col in old and rep_col in old:
                    majority[:num_old] = np.where(grown, np.nan, old[majority_col])
                    rep[:num_old] = np.where(grown, np.nan, old[rep_col])
                rep_value = np.asarray(values)[rep_candidate[num_old:] - num_old]
                m_new, r_new = member_value_counts(labels[in_new] - num_old, np.asarray(values)[in_new], rep_value)
                majority[num_old:] = m_new / n[num_old:]
                rep[num_old:] = r_new / n[num_old:]
            _shares(out, name, majority, rep)
    return out


def sort_by_recency(columns: Columns) -> Columns:
    """Rows ordered by ``last_ts`` ascending (most recent last), ties by ``first_ts`` then input order."""
    n = len(columns["last_ts"])
    order = np.lexsort((np.arange(n), columns["first_ts"], columns["last_ts"]))
    return {name: values[order] for name, values in columns.items()}

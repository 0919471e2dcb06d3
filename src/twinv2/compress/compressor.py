"""One user's compression: the per-user function every backend runs (local workers, Spark executors, the
serving store's incremental folding).

:class:`UserCompressor` holds what compressing one user needs (item table, features, clustering config,
snapshot, seed) and is picklable; :mod:`twinv2.compress.job` (local backend) and
:mod:`twinv2.compress.spark` both import it from here, so neither backend imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from twinv2.compress.cluster import ClusterConfig, assign_incremental, cluster_life_cycle
from twinv2.compress.store import Columns
from twinv2.compress.virtual_items import (
    build_virtual_items,
    canonical_order,
    normalize_rows,
    sort_by_recency,
    update_virtual_items,
)
from twinv2.errors import CompressionError

__all__ = ["ONE_THREAD_ENV", "UserCompressor"]

# Maths libraries read these when they load: a worker started with them uses one thread, so N workers use
# N cores instead of N x cores threads fighting each other.
ONE_THREAD_ENV = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ---- one user ------------------------------------------------------------------------------------------


@dataclass
class UserCompressor:
    """Everything needed to compress one user's behaviors; picklable, shared by every backend.

    Attributes:
        embeddings: float32 ``[num_items + 1, d]`` item table (``None`` until a worker loads it).
        item_numerics: float32 ``[num_items + 1]`` inherent numeric features (``duration``, ...) by name.
        cross_names: the manifest's cross numerics, in order.
        mean_names: the averaged features (:func:`twinv2.compress.store.mean_feature_names`).
        config: the clustering configuration; snapshot_ts: the snapshot; seed: base seed (int >= 0).
        split_values: int64 ``[num_items + 1]`` each item's value of ``config.split_by`` (required with
            ``split_by``; see :meth:`with_item_categoricals`).
        categoricals: int64 ``[num_items + 1]`` per inherent categorical name: the virtual items get the
            ``majority_share_<name>`` and ``rep_share_<name>`` columns (empty: no such columns).
    """

    embeddings: np.ndarray | None
    item_numerics: dict[str, np.ndarray]
    cross_names: list[str]
    mean_names: list[str]
    config: ClusterConfig
    snapshot_ts: int
    seed: int
    split_values: np.ndarray | None = None
    categoricals: dict[str, np.ndarray] = field(default_factory=dict)

    def with_item_categoricals(self, items: dict[str, np.ndarray], names: list[str]) -> UserCompressor:
        """A copy reading the inherent categoricals ``names`` from ``items`` (a dataset's item table, int
        ``[num_items + 1]`` per name): their member shares are recorded, and ``split_values`` is set to the
        column of ``config.split_by`` (which must be one of ``names``)."""
        tables = {n: np.asarray(items[n], dtype=np.int64) for n in names}
        split = self.config.split_by
        if split is not None and split not in tables:
            raise CompressionError(f"split_by={split!r} is not an inherent categorical of the dataset; expected "
                                   f"one of: {', '.join(names) or '(none)'}")
        return replace(self, categoricals=tables, split_values=None if split is None else tables[split])

    @property
    def share_names(self) -> list[str]:
        """The categoricals whose member shares the virtual items record, in column order."""
        return list(self.categoricals)

    def _split(self, item_id: np.ndarray) -> np.ndarray | None:
        if self.config.split_by is None:
            return None
        if self.split_values is None:
            raise CompressionError(f"ClusterConfig.split_by={self.config.split_by!r} but this UserCompressor has "
                                   "no split_values (each item's value of it): build it with "
                                   "with_item_categoricals(dataset.items, names)")
        return self.split_values[item_id]

    def _clustered(self, item_id: np.ndarray) -> np.ndarray:
        assert self.embeddings is not None, "worker embeddings not loaded"
        x = np.asarray(self.embeddings[item_id], dtype=np.float32)
        return normalize_rows(x) if self.config.normalize else x

    def _features(self, item_id: np.ndarray, label: np.ndarray, cross: dict[str, np.ndarray]
                  ) -> dict[str, np.ndarray]:
        features = {n: cross[n] for n in self.cross_names}
        features["label"] = label
        for name, table in self.item_numerics.items():
            features[name] = table[item_id]
        return features

    def _canonical(self, item_id: np.ndarray, ts: np.ndarray, label: np.ndarray, cross: dict[str, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
        perm = canonical_order(ts, item_id, label, [cross[n] for n in self.cross_names])
        return item_id[perm], ts[perm], label[perm], {n: v[perm] for n, v in cross.items()}, perm

    @property
    def _inner_config(self) -> ClusterConfig:
        # The embeddings handed to the clustering are already normalised (so the virtual items measure
        # distances in exactly the space that was clustered).
        return replace(self.config, normalize=False)

    def compress(self, user_id: int, item_id: np.ndarray, ts: np.ndarray, label: np.ndarray,
                 cross: dict[str, np.ndarray]) -> Columns:
        """Virtual items of one user (``N >= 1`` behaviors, all before the snapshot), most recent last.

        Args:
            item_id, ts: int64 ``[N]``; label: int8 ``[N]``; cross: float32 ``[N]`` per cross feature.
        """
        item_id, ts, label, cross, _ = self._canonical(item_id, ts, label, cross)
        x = self._clustered(item_id)
        config = self._inner_config
        while True:
            rng = np.random.default_rng([self.seed, int(user_id)])
            result = cluster_life_cycle(x, cross["completion_ratio"], config, rng, split_values=self._split(item_id))
            # Over the per-user budget: coarser clusters (gamma doubled) until it fits, or until gamma covers
            # the whole history (one cluster per completion group / split cell: nothing coarser exists).
            if config.max_clusters is None or len(result.sizes) <= config.max_clusters or config.gamma >= len(x):
                break
            config = replace(config, gamma=min(2 * config.gamma, len(x)))
        cols = build_virtual_items(int(user_id), result.labels, result.groups, x, item_id, ts,
                                   self._features(item_id, label, cross), self.snapshot_ts,
                                   categoricals={n: t[item_id] for n, t in self.categoricals.items()} or None)
        return sort_by_recency(cols)

    def update(self, user_id: int, old: Columns, item_id: np.ndarray, ts: np.ndarray, label: np.ndarray,
               cross: dict[str, np.ndarray], new_groups: np.ndarray | None) -> Columns:
        """Fold one user's behaviors in ``[old snapshot, snapshot)`` into their old virtual items.

        Args:
            old: the user's rows from the previous folder (``C >= 0``).
            item_id, ts, label, cross: ``[M]`` new behaviors.
            new_groups: int8 ``[M]`` completion groups (needed for quantile bins), or None.
        """
        item_id, ts, label, cross, perm = self._canonical(item_id, ts, label, cross)
        if new_groups is not None:
            new_groups = new_groups[perm]
        x = self._clustered(item_id)
        if len(item_id):
            # With split_by, an old cluster's value is its representative's, which every member shares.
            old_values = self._split(np.asarray(old["rep_item_id"], np.int64))
            inc = assign_incremental(old["centroid"], old["cluster_size"], old["completion_group"], x,
                                     cross["completion_ratio"], self._inner_config, new_groups=new_groups,
                                     values=old_values, new_values=self._split(item_id))
            labels, groups, sizes = inc.labels, inc.groups, inc.sizes
        else:
            labels, groups, sizes = np.zeros(0, np.int64), old["completion_group"], old["cluster_size"]
        rep_x_old = self._clustered(old["rep_item_id"])
        split = self.config.split_by
        cols = update_virtual_items(int(user_id), old, labels, groups, sizes, x, rep_x_old, item_id, ts,
                                    self._features(item_id, label, cross), self.snapshot_ts,
                                    categoricals_new={n: t[item_id] for n, t in self.categoricals.items()} or None,
                                    pure=() if split is None else (split,))
        return sort_by_recency(cols)

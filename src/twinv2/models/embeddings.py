"""Feature embeddings built from the dataset manifest: inherent item features K_h and cross features K_c.

- **Inherent** features (identical for every user, DESIGN §2.1): the item id (``id_dim`` wide) and every
  item side feature (``feature_dim`` wide each): the manifest's inherent categoricals (code 0 = unknown has
  its own learnable row) and inherent numerics such as ``duration``, bucketised. They are looked up by item
  id from registered buffers (``item_feature_rows``), so a virtual item, which carries its representative
  item's id, gets exactly the cached inherent features of a real item.
- **Cross** features (one user-item event): the channels of ``SequenceBatch.cross`` (the manifest's cross
  numerics, then ``label`` and ``time_gap``), each bucketised into its own ``feature_dim`` embedding. For a
  virtual item the same channels hold the cluster means, which fall into the same buckets.

Bucketisation (the papers are silent; chosen here):

- ratio features (``ModelConfig.ratio_features``, default ``completion_ratio`` and ``label``): uniform
  buckets on [0, 1], ``floor(x * ratio_buckets)`` clipped to the last bucket (a mean label of a cluster is a
  ratio too);
- every other numeric (durations, play time, time gaps in seconds, extra importer numerics): signed log2
  buckets, ``floor(per_octave * log2(1 + |x|))`` with ``per_octave = 2``, covering ``|x| < 2**32``, the
  sign folded into the upper or lower half of the table. 60 s and 90 s of play time differ; 30 and 31 days
  of time gap do not, which is the resolution recency needs.

All buckets of all side features live in ONE ``nn.Embedding`` with per-feature row offsets (one gather per
lookup instead of one per feature); the cross channels likewise share one table.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from twinv2.data.batches import sequence_feature_names
from twinv2.data.schema import Manifest
from twinv2.errors import ConfigError, DataValidationError
from twinv2.models.config import ModelConfig

__all__ = ["AttentionEmbeddings", "FeatureEmbeddings", "log_buckets", "num_log_buckets", "ratio_buckets"]

_LOG_OCTAVES = 32  # |x| < 2**32 gets its own bucket; larger magnitudes share the last one


def num_log_buckets(per_octave: int) -> int:
    """Rows of a signed log-bucket table: ``2 * 32 * per_octave``."""
    return 2 * _LOG_OCTAVES * per_octave


def log_buckets(x: torch.Tensor, per_octave: int) -> torch.Tensor:
    """Signed log2 bucket of each value: float ``[...]`` -> int64 ``[...]`` in ``[0, num_log_buckets)``.

    Non-negative values map to ``half + floor(per_octave * log2(1 + x))`` and negative ones to
    ``half - 1 - floor(per_octave * log2(1 + |x|))``, where ``half = 32 * per_octave``.
    """
    half = _LOG_OCTAVES * per_octave
    # The product is >= 0, so the truncating cast is the floor (one pass fewer than torch.floor).
    magnitude = (torch.log2(1.0 + x.abs()) * per_octave).clamp_(max=half - 1).long()
    return torch.where(x >= 0, half + magnitude, half - 1 - magnitude)


def ratio_buckets(x: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """Uniform bucket of a ratio in [0, 1]: float ``[...]`` -> int64 ``[...]`` in ``[0, num_buckets)``."""
    return torch.floor(x * num_buckets).clamp_(0, num_buckets - 1).long()


class FeatureEmbeddings(nn.Module):
    """Embedding tables and item-feature buffers for one dataset schema.

    Dimensions: ``inherent_dim = id_dim + feature_dim * (num categoricals + num item numerics)``,
    ``cross_dim = feature_dim * J`` with ``J = len(sequence_feature_names(manifest))``,
    ``full_dim = inherent_dim + cross_dim``.

    Args:
        config: the model config (dimensions and bucketisation).
        manifest: the dataset manifest (which item and cross features exist).
        items: ``Dataset.items`` (arrays indexed by item id, row 0 = padding), or None to build zero
            tables that ``load_state_dict`` then fills (the buffers are persistent, so a
            checkpoint carries them).
    Raises:
        DataValidationError: an item feature array is missing, has the wrong length or an out-of-vocab code.
    """

    def __init__(self, config: ModelConfig, manifest: Manifest, items: dict[str, np.ndarray] | None):
        super().__init__()
        self.num_items = manifest.num_items
        self.id_dim, self.feature_dim = config.id_dim, config.feature_dim
        self.per_octave, self.num_ratio_buckets = config.log_buckets_per_octave, config.ratio_buckets
        ratio_names = set(config.ratio_features)
        n_log = num_log_buckets(self.per_octave)

        # -- inherent side features: categoricals then numerics, one shared table with row offsets ---------
        self.categorical_names = [c.name for c in manifest.item_categoricals]
        self.item_numeric_names = [c.name for c in manifest.item_numerics]
        side_rows = [c.vocab_size for c in manifest.item_categoricals] + [
            self.num_ratio_buckets if n in ratio_names else n_log for n in self.item_numeric_names]
        side_offsets = np.concatenate([[0], np.cumsum(side_rows)[:-1]]).astype(np.int64)
        self._side_offsets = {name: int(o) for name, o in
                              zip(self.categorical_names + self.item_numeric_names, side_offsets, strict=True)}
        rows = torch.zeros(self.num_items + 1, len(side_rows), dtype=torch.int64)
        if items is not None:
            rows = self._item_rows(items, manifest, ratio_names, side_offsets)
        # Persistent: a checkpoint then rebuilds the model without the dataset's item table.
        self.register_buffer("item_feature_rows", rows)  # int64 [N + 1, S]

        self.id_embedding = nn.Embedding(self.num_items + 1, self.id_dim, padding_idx=0)
        self.item_feature_embedding = nn.Embedding(int(sum(side_rows)), self.feature_dim)

        # -- cross channels ----------------------------------------------------------------------------
        self.cross_names = sequence_feature_names(manifest)
        cross_rows = [self.num_ratio_buckets if n in ratio_names else n_log for n in self.cross_names]
        is_ratio = [n in ratio_names for n in self.cross_names]
        self.register_buffer("cross_ratio_channels", torch.tensor([j for j, r in enumerate(is_ratio) if r],
                                                                  dtype=torch.int64), persistent=False)
        self.register_buffer("cross_log_channels", torch.tensor([j for j, r in enumerate(is_ratio) if not r],
                                                                dtype=torch.int64), persistent=False)
        self.register_buffer("cross_row_offset",
                             torch.tensor(np.concatenate([[0], np.cumsum(cross_rows)[:-1]]), dtype=torch.int64),
                             persistent=False)  # int64 [J]
        self.register_buffer("cross_row_channel",
                             torch.repeat_interleave(torch.arange(len(cross_rows)), torch.tensor(cross_rows)),
                             persistent=False)  # int64 [R_c]: which channel each row belongs to
        self.cross_embedding = nn.Embedding(int(sum(cross_rows)), self.feature_dim)

        for table in (self.id_embedding, self.item_feature_embedding, self.cross_embedding):
            nn.init.normal_(table.weight, std=config.embedding_std)
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()

    def _item_rows(self, items: dict[str, np.ndarray], manifest: Manifest, ratio_names: set[str],
                   side_offsets: np.ndarray) -> torch.Tensor:
        """Validate ``items`` and turn every side feature into its embedding row: int64 ``[N + 1, S]``."""
        n = self.num_items + 1
        columns = []
        for spec in manifest.item_categoricals + manifest.item_numerics:
            values = items.get(spec.name)
            if values is None:
                raise DataValidationError("items", spec.name, "an item feature array (Dataset.items)",
                                          "it is missing")
            values = np.asarray(values)
            if values.shape != (n,):
                raise DataValidationError("items", spec.name, f"shape ({n},) (row 0 = padding)",
                                          str(values.shape))
            if spec.role == "inherent_categorical":
                if values.min() < 0 or values.max() >= spec.vocab_size:
                    raise DataValidationError("items", spec.name, f"codes in [0, {spec.vocab_size})",
                                              f"range {values.min()}..{values.max()}")
                columns.append(torch.from_numpy(values.astype(np.int64)))
            else:
                t = torch.from_numpy(values.astype(np.float32))
                columns.append(ratio_buckets(t, self.num_ratio_buckets) if spec.name in ratio_names
                               else log_buckets(t, self.per_octave))
        return torch.stack(columns, dim=1) + torch.from_numpy(side_offsets)[None, :]

    # -- dimensions ------------------------------------------------------------------------------------
    @property
    def num_cross(self) -> int:
        """J, the number of cross channels."""
        return len(self.cross_names)

    @property
    def inherent_dim(self) -> int:
        return self.id_dim + self.feature_dim * self.item_feature_rows.shape[1]

    @property
    def cross_dim(self) -> int:
        return self.feature_dim * self.num_cross

    @property
    def full_dim(self) -> int:
        return self.inherent_dim + self.cross_dim

    # -- lookups ---------------------------------------------------------------------------------------
    def inherent_blocks(self, item_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K_h as its two column blocks: ids ``[...]`` -> (id embedding ``[..., id_dim]``, side features
        ``[..., S * feature_dim]``), for callers that can use them without concatenating."""
        side = self.item_feature_embedding(self.item_feature_rows[item_id])  # [..., S, F]
        return self.id_embedding(item_id), side.flatten(-2)

    def inherent(self, item_id: torch.Tensor) -> torch.Tensor:
        """K_h: int64 ``[...]`` item ids -> float32 ``[..., inherent_dim]`` (id embedding, then side features)."""
        return torch.cat(self.inherent_blocks(item_id), dim=-1)

    def cross_rows(self, cross: torch.Tensor) -> torch.Tensor:
        """Bucket rows of the cross channels: float32 ``[..., J]`` raw values -> int64 ``[..., J]``.

        Raises:
            ConfigError: the batch has a different number of cross channels than the model's manifest.
        """
        if cross.shape[-1] != self.num_cross:
            raise ConfigError(f"batch has {cross.shape[-1]} cross channels but the model expects "
                              f"{self.num_cross} ({', '.join(self.cross_names)}); model and dataset do not match")
        # Each channel gets only its own scheme (computing both and selecting would double the work).
        buckets = torch.empty(cross.shape, dtype=torch.int64, device=cross.device)
        buckets[..., self.cross_log_channels] = log_buckets(cross[..., self.cross_log_channels], self.per_octave)
        buckets[..., self.cross_ratio_channels] = ratio_buckets(cross[..., self.cross_ratio_channels],
                                                                self.num_ratio_buckets)
        return buckets + self.cross_row_offset

    def cross(self, rows: torch.Tensor) -> torch.Tensor:
        """K_c flattened: int64 ``[..., J]`` rows -> float32 ``[..., J * feature_dim]``."""
        return self.cross_embedding(rows).flatten(-2)

    def full(self, item_id: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """K = [K_h, K_c]: ids ``[...]`` and cross rows ``[..., J]`` -> float32 ``[..., full_dim]``."""
        return torch.cat([self.inherent(item_id), self.cross(rows)], dim=-1)

    def cross_projection_table(self, weights: torch.Tensor) -> torch.Tensor:
        """Each cross bucket's scalar per head: ``weights`` float ``[H, J, F]`` -> float ``[R_c, H]``.

        Because the cross projection is block-diagonal (feature j's 8-d embedding meets only its own
        weight vector), a behavior's cross bias is a sum of per-bucket scalars: row ``r`` of the table is
        ``E[r] . weights[h, channel(r)]``. Gathering J scalars per behavior and head is cheaper than
        gathering J embeddings and projecting them, and identical in value and gradient.
        """
        per_row = weights[:, self.cross_row_channel, :]  # [H, R_c, F]
        return torch.einsum("rf,hrf->rh", self.cross_embedding.weight, per_row)

    def item_category(self, name: str) -> torch.Tensor:
        """Codes of inherent categorical ``name`` per item: int64 ``[N + 1]`` (0 = unknown)."""
        if name not in self.categorical_names:
            raise ConfigError(f"item feature {name!r} is not an inherent categorical of this dataset; "
                              f"available: {self.categorical_names or 'none'}")
        col = self.categorical_names.index(name)
        return self.item_feature_rows[:, col] - self._side_offsets[name]

    def categorical_column(self, name: str) -> tuple[int, int]:
        """Where inherent categorical ``name`` sits: (its column in ``item_feature_rows``, the row its code 0
        maps to). Two items share a value exactly when their rows in that column are equal."""
        if name not in self.categorical_names:
            raise ConfigError(f"item feature {name!r} is not an inherent categorical of this dataset; "
                              f"available: {self.categorical_names or 'none'}")
        return self.categorical_names.index(name), self._side_offsets[name]

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (trained with the sparse-friendly optimiser, e.g. Adagrad)."""
        return [self.id_embedding.weight, self.item_feature_embedding.weight, self.cross_embedding.weight]


class AttentionEmbeddings(nn.Module):
    """DARE's decoupled attention embeddings (Feng et al., ICLR 2025, arXiv 2410.02604): tables read only by
    the learned relevance score, separate from the representation tables of :class:`FeatureEmbeddings`.

    Item ids get ``id_dim`` columns, each item side feature ``features.feature_dim``; the side rows are the
    same bucket rows as the representation's (``features.item_feature_rows``), so a virtual item's key is its
    representative's, as for the representation. ``dim = id_dim + feature_dim * S``.
    """

    def __init__(self, features: FeatureEmbeddings, id_dim: int, std: float):
        super().__init__()
        self.id_embedding = nn.Embedding(features.num_items + 1, id_dim, padding_idx=0)
        self.side_embedding = nn.Embedding(features.item_feature_embedding.num_embeddings, features.feature_dim)
        self.dim = id_dim + features.feature_dim * features.item_feature_rows.shape[1]
        for table in (self.id_embedding, self.side_embedding):
            nn.init.normal_(table.weight, std=std)
        with torch.no_grad():
            self.id_embedding.weight[0].zero_()

    def blocks(self, features: FeatureEmbeddings, item_id: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The attention key as two column blocks: ids ``[...]`` -> (``[..., id_dim]``, ``[..., S * F]``)."""
        side = self.side_embedding(features.item_feature_rows[item_id])  # [..., S, F]
        return self.id_embedding(item_id), side.flatten(-2)

    def embedding_parameters(self) -> list[nn.Parameter]:
        return [self.id_embedding.weight, self.side_embedding.weight]

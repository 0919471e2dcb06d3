"""Average pooling: the mean of the full feature vectors of all L behaviors of the long sequence (no
target attention). The simplest long-term baseline: it shows what target-aware selection adds."""

from __future__ import annotations

import torch

from twinv2.data.batches import SequenceBatch
from twinv2.models.base import LongTermModule
from twinv2.models.config import ModelConfig
from twinv2.models.embeddings import FeatureEmbeddings

__all__ = ["AvgPoolLongTerm"]


class AvgPoolLongTerm(LongTermModule):
    """Masked mean over the sequence; an empty sequence gives zeros."""

    long_source = "raw"

    def __init__(self, config: ModelConfig, features: FeatureEmbeddings):
        super().__init__(config, features)
        self.out_dim = features.full_dim

    def forward(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
                seq: SequenceBatch) -> torch.Tensor:
        """seq ``[B, L]`` -> float ``[B, full_dim]``."""
        values = features.full(seq.item_id, features.cross_rows(seq.cross))  # [B, L, D]
        values = torch.where(seq.mask[..., None], values, 0.0)
        count = seq.mask.sum(dim=1, keepdim=True).clamp_min(1).to(values.dtype)  # [B, 1]
        return values.sum(dim=1) / count

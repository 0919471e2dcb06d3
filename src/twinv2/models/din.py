"""DIN (Zhou et al., KDD 2018, arXiv 1706.06978): deep interest network over the most recent ``din_len``
behaviors.

Each behavior gets a weight from DIN's local activation unit, an MLP over the behavior's item features
``e``, the target's ``q``, their difference and element-wise product ``[e, q, e - q, e * q]`` (and here also
the behavior's cross features, so DIN sees the same inputs as the other models). As in the paper the
weights are NOT softmax-normalised (their scale keeps the intensity of interest), and the output is the
weighted sum of the behaviors' full feature vectors. Hidden sizes (80, 40) follow the paper; PReLU stands
in for Dice (Dice needs batch statistics, which would make eval differ from train).
"""

from __future__ import annotations

import torch

from twinv2.data.batches import SequenceBatch
from twinv2.models.attention import MLP
from twinv2.models.base import LongTermModule
from twinv2.models.config import ModelConfig
from twinv2.models.embeddings import FeatureEmbeddings

__all__ = ["DinLongTerm"]

_ACTIVATION_UNIT_HIDDEN = (80, 40)


class DinLongTerm(LongTermModule):
    """Activation-unit weighted sum pooling over ``seq[:, :din_len]``."""

    long_source = "raw"

    def __init__(self, config: ModelConfig, features: FeatureEmbeddings):
        super().__init__(config, features)
        d_h = features.inherent_dim
        self.activation_unit = MLP(4 * d_h + features.cross_dim, _ACTIVATION_UNIT_HIDDEN, 1)
        self.out_dim = features.full_dim

    def forward(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
                seq: SequenceBatch) -> torch.Tensor:
        """query ``[B, D_h]``, seq ``[B, L]`` (only the first ``din_len`` are read) -> ``[B, full_dim]``."""
        n = self.config.din_len
        item_id, cross, mask = seq.item_id[:, :n], seq.cross[:, :n], seq.mask[:, :n]
        keys = features.inherent(item_id)  # [B, n, D_h]
        crosses = features.cross(features.cross_rows(cross))  # [B, n, J F]
        q = query[:, None, :].expand_as(keys)
        weights = self.activation_unit(torch.cat([keys, q, keys - q, keys * q, crosses], dim=-1))  # [B, n, 1]
        weights = torch.where(mask[..., None], weights, 0.0)
        return (weights * torch.cat([keys, crosses], dim=-1)).sum(dim=1)

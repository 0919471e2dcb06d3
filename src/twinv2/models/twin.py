"""TWIN (Chang et al., KDD 2023, arXiv 2302.02352): two-stage interest network over the L most recent raw
behaviors. GSU and ESU share one relevance score (inherent features by dot product, cross features as a
block-diagonal bias); the GSU keeps the top k by a round-robin merge of the heads' rankings."""

from __future__ import annotations

import torch

from twinv2.data.batches import SequenceBatch
from twinv2.models.attention import TwinAttention
from twinv2.models.base import LongTermModule
from twinv2.models.config import ModelConfig
from twinv2.models.embeddings import FeatureEmbeddings

__all__ = ["TwinLongTerm"]


class TwinLongTerm(LongTermModule):
    """TWIN over raw behaviors: ``TwinAttention`` without the cluster-size term."""

    long_source = "raw"

    def __init__(self, config: ModelConfig, features: FeatureEmbeddings):
        super().__init__(config, features)
        self.twin = TwinAttention(features, config.num_heads, config.head_dim, init=config.score_init,
                                  beta_init=config.cross_beta_init, null_slot=config.esu_null_slot,
                                  input_std=config.embedding_std)
        self.out_dim = self.twin.out_dim

    def use_log_size(self) -> bool:
        """Whether the score adds ``ln n`` (never for TWIN: every raw behavior has n = 1)."""
        return False

    def forward(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
                seq: SequenceBatch) -> torch.Tensor:
        """query ``[B, D_h]``, seq ``[B, L]`` -> float ``[B, H * d_v]``."""
        return self.twin(features, query, seq, self.config.esu_size, self.use_log_size())

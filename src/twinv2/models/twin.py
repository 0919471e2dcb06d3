"""TWIN (Chang et al., KDD 2023, arXiv 2302.02352): two-stage interest network over the L most recent raw
behaviors. GSU and ESU share one relevance score (inherent features by dot product, cross features as a
block-diagonal bias); the GSU keeps the top k by a round-robin merge of the heads' rankings.

``relevance: match`` (the default) adds the attribute-aware exact-match term to that score, and
``attention_embeddings`` gives the score its own tables (DARE); ``relevance: paper`` without the option is
the paper's score exactly (docs/models.md).
"""

from __future__ import annotations

import torch
from torch import nn

from twinv2.data.batches import SequenceBatch
from twinv2.models.attention import GsuTrace, TwinAttention
from twinv2.models.base import LongTermModule
from twinv2.models.config import ModelConfig
from twinv2.models.embeddings import FeatureEmbeddings

__all__ = ["TwinLongTerm", "match_feature_names"]


def match_feature_names(config: ModelConfig, features: FeatureEmbeddings) -> tuple[str, ...]:
    """The categoricals of the exact-match term: none under ``relevance: paper``; else
    ``config.match_features`` (each checked against the dataset), or every inherent categorical."""
    if config.relevance != "match":
        return ()
    if config.match_features is None:
        return tuple(features.categorical_names)
    for name in config.match_features:
        features.categorical_column(name)  # ConfigError naming the feature and the valid ones
    return config.match_features


class TwinLongTerm(LongTermModule):
    """TWIN over raw behaviors: ``TwinAttention`` without the cluster-size term."""

    long_source = "raw"

    def __init__(self, config: ModelConfig, features: FeatureEmbeddings):
        super().__init__(config, features)
        self.twin = TwinAttention(features, config.num_heads, config.head_dim, init=config.score_init,
                                  beta_init=config.cross_beta_init, null_slot=config.esu_null_slot,
                                  input_std=config.embedding_std,
                                  match_features=match_feature_names(config, features),
                                  match_init=config.match_init,
                                  attention_dim=config.attention_dim if config.decoupled_attention else None,
                                  evidence=config.esu_evidence)
        self.out_dim = self.twin.out_dim

    def use_log_size(self) -> bool:
        """Whether the score adds ``ln n`` (never for TWIN: every raw behavior has n = 1)."""
        return False

    def embedding_parameters(self) -> list[nn.Parameter]:
        return self.twin.embedding_parameters()

    def gsu_trace(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
                  seq: SequenceBatch) -> GsuTrace:
        """The GSU's choice, score terms and ESU weights for diagnostics (:meth:`TwinAttention.trace`):
        query ``[B, D_h]``, target_item int64 ``[B]``, seq ``[B, L]``."""
        return self.twin.trace(features, query, target_item, seq, self.config.esu_size, self.use_log_size())

    def forward(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
                seq: SequenceBatch) -> torch.Tensor:
        """query ``[B, D_h]``, seq ``[B, L]`` -> float ``[B, H * d_v]``."""
        return self.twin(features, query, target_item, seq, self.config.esu_size, self.use_log_size())

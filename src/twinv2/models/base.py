"""The interface every long-term module implements (one file per module, built from ``attention.py``)."""

from __future__ import annotations

import abc

import torch
from torch import nn

from twinv2.data.batches import SequenceBatch
from twinv2.models.attention import TargetAttention, gather_positions, topk_merge
from twinv2.models.config import ModelConfig
from twinv2.models.embeddings import FeatureEmbeddings

__all__ = ["LongTermModule", "RetrieveThenAttend"]


class LongTermModule(nn.Module, abc.ABC):
    """Turns the long behavior sequence into one vector per sample, given the target.

    Subclasses set ``long_source`` ("raw": the L most recent behaviors; "compressed": TWIN-V2's recent raw
    behaviors followed by virtual items) and ``out_dim``. The feature tables are passed to ``forward``
    rather than stored, so the CTR model owns them once.
    """

    long_source: str = "raw"
    out_dim: int

    def __init__(self, config: ModelConfig, features: FeatureEmbeddings):
        super().__init__()
        self.config = config

    @abc.abstractmethod
    def forward(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
                seq: SequenceBatch) -> torch.Tensor:
        """query float ``[B, D_h]`` (the target's inherent features), target_item int64 ``[B]``,
        seq ``[B, L]`` -> float ``[B, out_dim]``."""

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Embedding tables the module owns beyond the shared ones (none by default)."""
        return []


class RetrieveThenAttend(LongTermModule):
    """Two-stage baselines whose GSU is a separate, non-learned search (SIM, ETA): the GSU scores every
    behavior without autograd, keeps the top ``esu_size``, and the ESU is classic multi-head target attention
    over their full features (:class:`TargetAttention`)."""

    long_source = "raw"

    def __init__(self, config: ModelConfig, features: FeatureEmbeddings):
        super().__init__(config, features)
        self.esu = TargetAttention(features, config.num_heads, config.head_dim)
        self.out_dim = self.esu.out_dim

    @abc.abstractmethod
    def search_scores(self, features: FeatureEmbeddings, target_item: torch.Tensor,
                      seq: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """GSU scores (higher = chosen first) float ``[B, L]`` and the searchable behaviors bool ``[B, L]``
        (a subset of ``seq.mask``). Called under ``torch.no_grad``."""

    def forward(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
                seq: SequenceBatch) -> torch.Tensor:
        """query ``[B, D_h]``, seq ``[B, L]`` -> float ``[B, H * d_v]``."""
        with torch.no_grad():
            scores, searchable = self.search_scores(features, target_item, seq)
            index, valid = topk_merge(scores[..., None], searchable, self.config.esu_size)  # [B, k]
        chosen = gather_positions(seq, index)
        chosen.mask = valid
        return self.esu(features, query, chosen)

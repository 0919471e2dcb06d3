"""SIM (Pi et al., CIKM 2020, arXiv 2006.05639): search-based user interest modeling.

- ``sim_hard``: the GSU keeps the behaviors whose category equals the target's (the paper's hard search by
  category), the most recent ``esu_size`` of them.
- ``sim_soft``: the GSU keeps the ``esu_size`` behaviors with the largest inner product between their item
  id embedding and the target's (the paper's soft search). SIM trains a separate GSU embedding with an
  auxiliary loss; here the GSU reuses the model's own id embeddings (end to end, no auxiliary task), as
  later papers' SIM-soft baselines do.

Both ESUs are classic multi-head target attention over the kept behaviors' full features (item features
and cross features, including the time gap the paper adds to each behavior).
"""

from __future__ import annotations

import torch

from twinv2.data.batches import SequenceBatch
from twinv2.errors import ConfigError
from twinv2.models.base import RetrieveThenAttend
from twinv2.models.config import ModelConfig
from twinv2.models.embeddings import FeatureEmbeddings

__all__ = ["SimHardLongTerm", "SimSoftLongTerm", "resolve_sim_category"]


def resolve_sim_category(config: ModelConfig, features: FeatureEmbeddings) -> str:
    """The categorical SIM (hard) matches on: ``config.sim_category``, else ``category_id`` if the dataset
    has it, else its first inherent categorical. Raises ConfigError when the dataset has none."""
    names = features.categorical_names
    if config.sim_category is not None:
        if config.sim_category not in names:
            raise ConfigError(f"sim_category {config.sim_category!r} is not an inherent categorical of this "
                              f"dataset; available: {names or 'none'}")
        return config.sim_category
    if not names:
        raise ConfigError("sim_hard needs an inherent categorical item feature (e.g. category_id); "
                          "this dataset declares none")
    return "category_id" if "category_id" in names else names[0]


class SimHardLongTerm(RetrieveThenAttend):
    """Same-category search: the most recent ``esu_size`` behaviors sharing the target's category.

    Code 0 (unknown) matches nothing: an unknown category says nothing about relevance.
    """

    def __init__(self, config: ModelConfig, features: FeatureEmbeddings):
        super().__init__(config, features)
        self.category = resolve_sim_category(config, features)

    def search_scores(self, features: FeatureEmbeddings, target_item: torch.Tensor,
                      seq: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        codes = features.item_category(self.category)  # [N + 1]
        target_code = codes[target_item]  # [B]
        match = seq.mask & (codes[seq.item_id] == target_code[:, None]) & (target_code[:, None] != 0)
        B, L = seq.item_id.shape
        # Sequences are most recent first, so "most recent" = smallest position = highest score.
        recency = -torch.arange(L, dtype=torch.float32, device=seq.item_id.device).expand(B, L)
        return recency, match


class SimSoftLongTerm(RetrieveThenAttend):
    """Inner-product search on the item id embeddings."""

    def search_scores(self, features: FeatureEmbeddings, target_item: torch.Tensor,
                      seq: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        target = features.id_embedding(target_item)  # [B, D_id]
        behaviors = features.id_embedding(seq.item_id)  # [B, L, D_id]
        return torch.bmm(behaviors, target[:, :, None]).squeeze(-1), seq.mask

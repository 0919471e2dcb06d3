"""ETA (Chen et al., 2021, arXiv 2108.04468): end-to-end target attention with SimHash retrieval.

The GSU hashes the item embeddings of the behaviors and of the target with SimHash (signs of projections on
``eta_hash_bits`` fixed random hyperplanes, drawn once from ``hash_seed``) and keeps the ``esu_size``
behaviors at the smallest Hamming distance from the target; ties (frequent: distances are integers in
[0, m]) go to the more recent behavior. The embeddings hashed are the model's own, updated end to end, so
the retrieval never goes stale. The ESU is multi-head target attention over the kept behaviors.

Choices where the paper is silent: the hashed vector is the inherent feature vector K_h (id and side
features, so the target and the behaviors live in one space); a projection of exactly 0 counts as bit 1.
"""

from __future__ import annotations

import torch

from twinv2.data.batches import SequenceBatch
from twinv2.models.base import RetrieveThenAttend
from twinv2.models.config import ModelConfig
from twinv2.models.embeddings import FeatureEmbeddings

__all__ = ["EtaLongTerm", "simhash_signs"]


def simhash_signs(vectors: torch.Tensor, hyperplanes: torch.Tensor) -> torch.Tensor:
    """SimHash bits as +-1: float ``[..., D]`` times ``[D, m]`` -> float ``[..., m]`` in {-1, +1}."""
    return torch.where(vectors @ hyperplanes >= 0, 1.0, -1.0)


class EtaLongTerm(RetrieveThenAttend):
    """SimHash + Hamming-distance top-k, then target attention."""

    def __init__(self, config: ModelConfig, features: FeatureEmbeddings):
        super().__init__(config, features)
        generator = torch.Generator().manual_seed(config.hash_seed)
        # Persistent buffer: a checkpoint reproduces the same hash functions.
        self.register_buffer("hyperplanes", torch.randn(features.inherent_dim, config.eta_hash_bits,
                                                        generator=generator))

    def search_scores(self, features: FeatureEmbeddings, target_item: torch.Tensor,
                      seq: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        L = seq.item_id.shape[1]
        m = self.hyperplanes.shape[1]
        target = simhash_signs(features.inherent(target_item), self.hyperplanes)  # [B, m]
        behaviors = simhash_signs(features.inherent(seq.item_id), self.hyperplanes)  # [B, L, m]
        # For +-1 vectors, Hamming distance = (m - s_i . s_q) / 2: one batched product, exact in float.
        hamming = (m - torch.bmm(behaviors, target[:, :, None]).squeeze(-1)) / 2  # [B, L]
        position = torch.arange(L, dtype=torch.float64, device=seq.item_id.device)
        # float64 keeps distance * (L + 1) + position exact for any realistic L; smaller is better.
        return -(hamming.double() * (L + 1) + position), seq.mask

"""SDIM (Cao et al., CIKM 2022, arXiv 2205.10249): sampling-based deep interest modeling.

No retrieval and no attention: ``sdim_num_hashes`` (m) hash functions, each the signs of
``sdim_hash_bits`` (tau) fixed random projections, give every behavior and the target an m-tuple of
tau-bit bucket codes. For each hash function the behaviors whose code equals the target's ("collide") are
summed and the sum is L2-normalised (the paper prefers L2 over dividing by the count); the m results are
averaged. A behavior collides under one function with probability ``(1 - theta/pi)^tau`` (theta: its angle
to the target), so the output approximates target attention with those weights.

SDIM uses the GSU input length L (the whole sequence given by the batch) and has no ESU, so ``esu_size``
does not apply. Choices where the paper is silent: the hashed vector is K_h (the target has no cross
features); the aggregated vector is the full behavior feature vector (K_h and K_c); the hyperplanes are
drawn once from ``hash_seed`` and kept (a persistent buffer).
"""

from __future__ import annotations

import torch

from twinv2.data.batches import SequenceBatch
from twinv2.models.base import LongTermModule
from twinv2.models.config import ModelConfig
from twinv2.models.embeddings import FeatureEmbeddings

__all__ = ["SdimLongTerm", "hash_codes"]

_NORM_EPS = 1e-8


def hash_codes(vectors: torch.Tensor, hyperplanes: torch.Tensor) -> torch.Tensor:
    """Bucket code per hash function: float ``[..., D]``, hyperplanes ``[D, m, tau]`` -> int64 ``[..., m]``
    in ``[0, 2**tau)`` (bit t set when the projection on hyperplane t is >= 0)."""
    D, m, tau = hyperplanes.shape
    bits = (vectors @ hyperplanes.view(D, m * tau) >= 0).view(*vectors.shape[:-1], m, tau).long()
    powers = 2 ** torch.arange(tau, device=vectors.device)
    return (bits * powers).sum(dim=-1)


class SdimLongTerm(LongTermModule):
    """Hash-collision sampling and per-hash L2-normalised aggregation over the whole sequence."""

    long_source = "raw"

    def __init__(self, config: ModelConfig, features: FeatureEmbeddings):
        super().__init__(config, features)
        generator = torch.Generator().manual_seed(config.hash_seed)
        self.register_buffer("hyperplanes", torch.randn(features.inherent_dim, config.sdim_num_hashes,
                                                        config.sdim_hash_bits, generator=generator))
        self.out_dim = features.full_dim

    def forward(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
                seq: SequenceBatch) -> torch.Tensor:
        """seq ``[B, L]`` -> float ``[B, full_dim]``; a row with no collision at all gives zeros."""
        keys = features.inherent(seq.item_id)  # [B, L, D_h]
        with torch.no_grad():
            target_codes = hash_codes(query, self.hyperplanes)  # [B, m]
            codes = hash_codes(keys, self.hyperplanes)  # [B, L, m]
            collide = ((codes == target_codes[:, None, :]) & seq.mask[..., None]).to(keys.dtype)
        values = torch.cat([keys, features.cross(features.cross_rows(seq.cross))], dim=-1)  # [B, L, D]
        per_hash = torch.bmm(collide.transpose(1, 2), values)  # [B, m, D]: sum of colliding behaviors
        per_hash = per_hash / per_hash.norm(dim=-1, keepdim=True).clamp_min(_NORM_EPS)
        return per_hash.mean(dim=1)

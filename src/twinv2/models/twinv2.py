"""TWIN-V2 (Si et al., CIKM 2024, arXiv 2407.16357): TWIN over the compressed life cycle.

The sequence holds the raw behaviors since the compression snapshot (n = 1) followed by the user's virtual
items (clusters of the whole earlier life cycle, n = cluster size). Cluster-aware target attention adds
``ln n`` to the shared GSU/ESU score, so the GSU ranks by ``alpha + ln n`` and the ESU's softmax weighs each
cluster as ``n e^alpha``: exactly as if its n members, with equal scores, were all attended to.
``use_log_size=False`` is the paper's ablation (TWIN's score on the compressed sequence).
"""

from __future__ import annotations

from twinv2.models.twin import TwinLongTerm

__all__ = ["TwinV2LongTerm"]


class TwinV2LongTerm(TwinLongTerm):
    """TWIN's module with the cluster-size term; same parameters, so a TWIN checkpoint loads into it."""

    long_source = "compressed"

    def use_log_size(self) -> bool:
        return self.config.use_log_size

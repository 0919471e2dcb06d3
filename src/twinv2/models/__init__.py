"""CTR models: TWIN-V2, TWIN and the long-sequence baselines, built from shared target-attention primitives.

Example:
    >>> from twinv2.models import ModelConfig, build_model
    >>> config = ModelConfig(long_term="twinv2", esu_size=100)
    >>> model = build_model(config, dataset.manifest, dataset.items)  # doctest: +SKIP
    >>> logits = model(batch)  # float32 [B]  # doctest: +SKIP
"""

from twinv2.models.attention import (
    MLP,
    MultiHeadTargetAttention,
    RelevanceScore,
    TargetAttention,
    TwinAttention,
    cluster_aware_scores,
    masked_softmax,
    topk_merge,
)
from twinv2.models.base import LongTermModule
from twinv2.models.config import LONG_TERM_NAMES, ModelConfig
from twinv2.models.ctr import LONG_TERM_MODULES, CTRModel, build_model
from twinv2.models.embeddings import FeatureEmbeddings

__all__ = [
    "LONG_TERM_MODULES",
    "LONG_TERM_NAMES",
    "MLP",
    "CTRModel",
    "FeatureEmbeddings",
    "LongTermModule",
    "ModelConfig",
    "MultiHeadTargetAttention",
    "RelevanceScore",
    "TargetAttention",
    "TwinAttention",
    "build_model",
    "cluster_aware_scores",
    "masked_softmax",
    "topk_merge",
]

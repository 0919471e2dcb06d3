"""The CTR model: feature embeddings, a long-term module chosen by name, the short-term module, an MLP.

``logit = MLP([q, long_term(q, long sequence), short_term(q, last short_len behaviors)])`` where q is the
target's inherent feature vector. One class serves every long-term module, so all models share the same
inputs, short-term module and head, and differ only in how they read the long sequence.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from twinv2.data.batches import Batch, SequenceBatch
from twinv2.data.schema import Manifest
from twinv2.errors import ConfigError
from twinv2.models.attention import MLP, TargetAttention
from twinv2.models.avg_pool import AvgPoolLongTerm
from twinv2.models.base import LongTermModule
from twinv2.models.config import LONG_TERM_NAMES, ModelConfig
from twinv2.models.dare import DareLongTerm
from twinv2.models.din import DinLongTerm
from twinv2.models.embeddings import FeatureEmbeddings
from twinv2.models.eta import EtaLongTerm
from twinv2.models.sdim import SdimLongTerm
from twinv2.models.sim import SimHardLongTerm, SimSoftLongTerm
from twinv2.models.twin import TwinLongTerm
from twinv2.models.twinv2 import TwinV2LongTerm

__all__ = ["LONG_TERM_MODULES", "CTRModel", "build_model"]

LONG_TERM_MODULES: dict[str, type[LongTermModule]] = {
    "twinv2": TwinV2LongTerm,
    "twin": TwinLongTerm,
    "dare": DareLongTerm,
    "sim_soft": SimSoftLongTerm,
    "sim_hard": SimHardLongTerm,
    "eta": EtaLongTerm,
    "sdim": SdimLongTerm,
    "din": DinLongTerm,
    "avg_pool": AvgPoolLongTerm,
}
if tuple(LONG_TERM_MODULES) != LONG_TERM_NAMES:  # pragma: no cover - a developer error, caught on import
    raise RuntimeError("LONG_TERM_MODULES and config.LONG_TERM_NAMES disagree")


def _truncate(seq: SequenceBatch, length: int) -> SequenceBatch:
    """The first ``length`` (most recent) positions of ``seq``."""
    return SequenceBatch(seq.item_id[:, :length], seq.cross[:, :length], seq.size[:, :length],
                         seq.mask[:, :length])


class CTRModel(nn.Module):
    """Click-through-rate model: ``forward(batch) -> logits [B]``.

    Example:
        >>> model = build_model(ModelConfig(long_term="twin"), dataset.manifest, dataset.items)  # doctest: +SKIP
        >>> torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)  # doctest: +SKIP
    """

    def __init__(self, config: ModelConfig, manifest: Manifest, items: dict[str, np.ndarray] | None):
        super().__init__()
        if config.long_term not in LONG_TERM_MODULES:  # ModelConfig checks too; objects can be forged
            raise ConfigError(f"unknown long-term model {config.long_term!r}; valid names: "
                              f"{', '.join(LONG_TERM_MODULES)}")
        self.config = config
        self.features = FeatureEmbeddings(config, manifest, items)
        self.long_term = LONG_TERM_MODULES[config.long_term](config, self.features)
        self.short_term = TargetAttention(self.features, config.num_heads, config.head_dim)
        head_in = self.features.inherent_dim + self.long_term.out_dim + self.short_term.out_dim
        self.head = MLP(head_in, config.mlp_dims, 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits float32 ``[B]`` for the batch's target items."""
        query = self.features.inherent(batch.target_item)  # [B, D_h]
        long = self.long_term(self.features, query, batch.target_item, batch.long)  # [B, D_long]
        short = self.short_term(self.features, query, _truncate(batch.short, self.config.short_len))
        return self.head(torch.cat([query, long, short], dim=-1)).squeeze(-1)

    def item_embedding_table(self) -> torch.Tensor:
        """The learned item id embeddings, float32 ``[num_items + 1, id_dim]`` (row 0 = padding), detached
        and on the CPU: the embeddings the compression job clusters."""
        return self.features.id_embedding.weight.detach().to("cpu", torch.float32).clone()

    def long_source(self) -> str:
        """Which long sequence the model reads: "compressed" (twinv2) or "raw"."""
        return self.long_term.long_source

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The embedding tables (the paper trains them with Adagrad), DARE's attention tables included."""
        return self.features.embedding_parameters() + self.long_term.embedding_parameters()

    def lookup_tables(self) -> list[nn.Embedding]:
        """The embedding tables read only by row lookups (item ids and item side features, DARE's attention
        tables included): their gradient may be sparse (``table.sparse = True``). The cross-feature table is
        not one of them: the GSU's cross-bias table is computed from all its rows."""
        return [m for m in self.modules() if isinstance(m, nn.Embedding) and m is not self.features.cross_embedding]

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every other trainable parameter (the paper trains them with Adam)."""
        sparse = {id(p) for p in self.embedding_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in sparse]


def build_model(config: ModelConfig, manifest: Manifest, items: dict[str, np.ndarray] | None) -> CTRModel:
    """Build the CTR model for a dataset schema.

    Args:
        config: the architecture (``config.long_term`` names the long-term module).
        manifest: the dataset manifest; items: ``Dataset.items`` (item features by id, row 0 = padding), or
            None when a checkpoint's state dict will fill the item-feature buffers.
    Raises:
        ConfigError: unknown long-term module or a config that does not fit the dataset (e.g. ``sim_hard``
            on a dataset without categoricals). DataValidationError: ``items`` does not match the manifest.
    """
    return CTRModel(config, manifest, items)

"""DARE (Feng et al., *Long-Sequence Recommendation Models Need Decoupled Embeddings*, ICLR 2025,
arXiv 2410.02604): TWIN over the L most recent raw behaviors whose relevance score reads its own attention
embedding tables, so that the gradients of attention (which behaviors to retrieve) and of representation
(what the kept behaviors say) do not share one table.

Here it is TWIN's module with ``attention_embeddings`` forced on (``ModelConfig.attention_dim`` wide ids;
the ESU's values, the short-term module and the MLP keep the representation tables). DARE's own score is
the paper-form dot product; run it with ``relevance: paper`` to compare with the publication, as the
quality benchmark does. The GSU keeps the top k by the same round-robin merge as TWIN.
"""

from __future__ import annotations

from twinv2.models.twin import TwinLongTerm

__all__ = ["DareLongTerm"]


class DareLongTerm(TwinLongTerm):
    """TWIN with decoupled attention embeddings (``ModelConfig.decoupled_attention`` is True for it)."""

    long_source = "raw"

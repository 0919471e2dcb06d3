"""Target-attention primitives shared by every model: relevance score, cluster-aware score, multi-head
top-k merge, multi-head target attention (MHTA), TWIN's two-stage GSU/ESU block, and an MLP.

Notation (DESIGN §2): B samples, L behaviors, H heads, d_k = d_v = ``head_dim``, J cross channels of
F = ``feature_dim`` each. Relevance of behavior i to the target q for head a::

    alpha_a = (K_h W_h_a)(q W_q_a)^T / sqrt(d_k) + (K_c W_c_a) beta_a

with ``W_c_a`` block-diagonal: channel j's F-d embedding meets its own vector ``w_aj`` (one scalar per
channel), and ``beta_a`` weighs the J scalars. TWIN-V2's cluster-aware form adds ``ln n``.

The first term is computed as ``K_h (W_h_a W_q_a^T q / sqrt(d_k))``: the query is carried into the key's
feature space once per sample (``query_kernel``), so scoring L behaviors costs ``L * D_h * H`` multiply-adds
instead of ``L * D_h * H * d_k`` — the same value, the training-time analogue of TWIN's cached ``K_h W_h``.

A slow pure-Python reference of the GSU (:func:`reference_topk_merge`) and of the score and ESU
(:func:`reference_twin_scores`, :func:`reference_esu`) sits at the end of the file; the tests check the fast
paths against them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from twinv2.data.batches import SequenceBatch
from twinv2.models.embeddings import AttentionEmbeddings, FeatureEmbeddings

__all__ = [
    "MLP",
    "ExactMatch",
    "FeaturePReLU",
    "GsuTrace",
    "MultiHeadTargetAttention",
    "RelevanceScore",
    "TargetAttention",
    "TwinAttention",
    "cluster_aware_scores",
    "cross_bias",
    "gather_positions",
    "masked_softmax",
    "reference_esu",
    "reference_match",
    "reference_topk_merge",
    "reference_twin_scores",
    "topk_merge",
]


# -- scores ---------------------------------------------------------------------------------------------
def cluster_aware_scores(alpha: torch.Tensor, size: torch.Tensor, mask: torch.Tensor,
                         use_log_size: bool) -> torch.Tensor:
    """TWIN-V2's ``alpha + ln n`` with padding at ``-inf``.

    Args:
        alpha: float ``[B, L, H]`` relevance scores.
        size: float ``[B, L]`` cluster sizes n (1 for raw behaviors; padding may hold 0).
        mask: bool ``[B, L]`` real items.
        use_log_size: False gives plain ``alpha`` (TWIN, and the TWIN-V2 ablation).
    Returns:
        float ``[B, L, H]``; ``-inf`` wherever ``mask`` is False.
    """
    if use_log_size:
        # clamp: padding holds n = 0, and ln 0 would be -inf anyway; keep the arithmetic finite.
        alpha = alpha + size.clamp_min(1.0).log()[..., None]
    return alpha.masked_fill(~mask[..., None], float("-inf"))


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over dim 1 restricted to ``mask``; a row with no real item gets all-zero weights.

    Args:
        scores: float ``[B, K, H]`` (may hold -inf at padding); mask: bool ``[B, K]``.
    Returns:
        float ``[B, K, H]``, summing to 1 over K for rows with a real item, 0 otherwise.
    """
    m = mask[..., None]
    # An all-padding row would be softmax(-inf, ..., -inf) = NaN; give it finite zeros instead.
    safe = torch.where(m, scores, 0.0)
    safe = safe.masked_fill(~m & m.any(dim=1, keepdim=True), float("-inf"))
    return torch.softmax(safe, dim=1) * m


class RelevanceScore(nn.Module):
    """``alpha_a = (K W_k_a)(q W_q_a)^T / sqrt(d_k) [+ (K_c W_c_a) beta_a]`` for H heads.

    With ``num_cross > 0`` this is TWIN's score (keys = inherent features, cross features as a per-behavior
    bias); with ``num_cross = 0`` it is the classic scaled dot-product target attention score (keys = the
    full features), used by the short-term module and the SIM/ETA ESUs.
    """

    def __init__(self, key_dim: int, query_dim: int, num_heads: int, head_dim: int, num_cross: int = 0,
                 cross_dim: int = 0, init: str = "xavier", beta_init: float = 1.0, input_std: float = 0.05):
        super().__init__()
        self.num_heads, self.head_dim, self.num_cross = num_heads, head_dim, num_cross
        self.key_weight = nn.Parameter(torch.empty(num_heads, key_dim, head_dim))  # W_h
        self.query_weight = nn.Parameter(torch.empty(num_heads, query_dim, head_dim))  # W_q
        for w in (self.key_weight, self.query_weight):
            nn.init.xavier_uniform_(w.view(-1, head_dim))
        if init == "aligned" and key_dim == query_dim:
            with torch.no_grad():
                self.query_weight.copy_(self.key_weight)
        elif init == "matched" and key_dim == query_dim:
            # W_q = W_k = g * (orthonormal columns) per head: the score starts as a scaled inner product of
            # the embeddings' projections. For embeddings of std s, an item scored against itself gets
            # about g^2 d_k s^2 / sqrt(d_k); g = d_k^(-1/4) / s makes that 1 (against another item: ~ 0 +-
            # 1 / sqrt(d_k)), so the target-aware term is not drowned by the cross bias at step 0.
            gain = head_dim ** -0.25 / input_std
            with torch.no_grad():
                for a in range(num_heads):
                    nn.init.orthogonal_(self.key_weight[a], gain=gain)
                self.query_weight.copy_(self.key_weight)
        if num_cross:
            # w_aj: channel j's own F-vector per head; beta_a: the weights of the J scalars per head.
            self.cross_weight = nn.Parameter(torch.randn(num_heads, num_cross, cross_dim) / math.sqrt(cross_dim))
            self.cross_beta = nn.Parameter(torch.full((num_heads, num_cross), float(beta_init)))

    def query_kernel(self, query: torch.Tensor) -> torch.Tensor:
        """``W_k_a W_q_a^T q / sqrt(d_k)``: float ``[B, D_q]`` -> ``[B, D_k, H]``."""
        # Per-head batched products on contiguous operands, one bmm each.
        q = torch.bmm(query.expand(self.num_heads, -1, -1), self.query_weight)  # [H, B, d_k]
        kernel = torch.bmm(q, self.key_weight.transpose(1, 2))  # [H, B, D_k]
        return kernel.permute(1, 2, 0).contiguous() / math.sqrt(self.head_dim)  # [B, D_k, H]

    def cross_weights(self) -> torch.Tensor:
        """The effective block-diagonal cross projection ``w_aj * beta_aj``: ``[H, J, F]``."""
        return self.cross_weight * self.cross_beta[..., None]

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """Serving's cacheable key side ``K W_k_a``: float ``[N, D_k]`` -> ``[H, N, d_k]``.

        With :meth:`project_query`, ``project_keys(K)[a] @ project_query(q)[a].T`` equals :meth:`forward`'s
        first term for head ``a`` (up to float rounding); ``twinv2.serve`` caches it per item."""
        return torch.matmul(keys, self.key_weight)  # [H, N, d_k]

    def project_query(self, query: torch.Tensor) -> torch.Tensor:
        """Serving's query side ``q W_q_a / sqrt(d_k)``: float ``[B, D_q]`` -> ``[H, B, d_k]``."""
        return torch.matmul(query, self.query_weight) / math.sqrt(self.head_dim)  # [H, B, d_k]

    def forward(self, keys: torch.Tensor | tuple[torch.Tensor, ...], kernel: torch.Tensor,
                cross_bias: torch.Tensor | None = None) -> torch.Tensor:
        """alpha: keys float ``[B, L, D_k]`` (or its column blocks, in order), kernel ``[B, D_k, H]`` (from
        :meth:`query_kernel`), optional cross_bias ``[B, L, H]`` -> float ``[B, L, H]``.

        Passing the blocks (e.g. id embedding and side features) spares concatenating an ``[B, L, D_k]``
        copy over the whole GSU sequence."""
        blocks = (keys,) if isinstance(keys, torch.Tensor) else keys
        starts = [0]
        for block in blocks:
            starts.append(starts[-1] + block.shape[-1])
        alpha = torch.bmm(blocks[0], kernel[:, :starts[1]])
        for block, start, end in zip(blocks[1:], starts[1:-1], starts[2:], strict=True):
            alpha = alpha + torch.bmm(block, kernel[:, start:end])
        return alpha if cross_bias is None else alpha + cross_bias


def cross_bias(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per-behavior cross bias ``(K_c W_c_a) beta_a``: table ``[R_c, H]`` (from
    :meth:`FeatureEmbeddings.cross_projection_table`), rows int64 ``[B, L, J]`` -> float ``[B, L, H]``."""
    B, L, J = rows.shape
    return table.index_select(0, rows.reshape(-1)).view(B, L, J, -1).sum(dim=2)


# -- GSU: multi-head top-k merge ------------------------------------------------------------------------
def topk_merge(alpha: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge the heads' rankings round robin until ``min(k, L)`` unique behaviors are chosen.

    Order of the walk: head 0's best, head 1's best, ..., head H-1's best, head 0's second best, ...;
    a behavior (a position, not an item id: the same item watched twice is two behaviors) already taken is
    skipped. Padding scores -inf, so every real behavior of a row is taken before any padding; with fewer
    real behaviors than k the rest of the slots hold padding positions and ``valid`` is False there.

    Why only each head's top k is needed: after r rounds head 0 alone has contributed r distinct
    behaviors, so the first k unique ones lie within the first k rounds. Duplicates are found without a
    sort: each position's first visit step is a scatter-min into a ``[B, L]`` table. Cost: one ``topk``
    over L per head, O(B * H * L), plus O(B * (L + k * H)) for the merge; no Python loop.

    Args:
        alpha: float ``[B, L, H]`` scores (padding may hold any value; it is masked here).
        mask: bool ``[B, L]`` real behaviors.
        k: the ESU size.
    Returns:
        index int64 ``[B, min(k, L)]`` positions in walk order; valid bool ``[B, min(k, L)]``.
    """
    B, L, H = alpha.shape
    k_eff = min(k, L)
    scores = alpha.masked_fill(~mask[..., None], float("-inf"))
    ranked = scores.topk(k_eff, dim=1).indices  # [B, k_eff, H]: ranked[b, r, a] = head a's r-th best
    walk = ranked.reshape(B, k_eff * H)  # walk step r * H + a: round-major, head-minor
    step = torch.arange(k_eff * H, device=alpha.device).expand(B, -1)  # [B, kH]
    first_visit = torch.full((B, L), k_eff * H, dtype=torch.long, device=alpha.device)
    first_visit.scatter_reduce_(1, walk, step, reduce="amin")  # [B, L]: earliest step visiting each position
    is_first = first_visit.gather(1, walk) == step  # [B, kH]
    slot = is_first.cumsum(dim=1) - 1  # output slot of each first visit, in walk order
    # Exactly k_eff first visits land in slots 0..k_eff-1 (head 0 alone gives k_eff); the rest, and repeat
    # visits, are written to a spare column that is dropped.
    slot = torch.where(is_first & (slot < k_eff), slot, k_eff)
    index = torch.zeros(B, k_eff + 1, dtype=torch.long, device=alpha.device).scatter_(1, slot, walk)[:, :k_eff]
    return index, mask.gather(1, index)


def gather_positions(seq: SequenceBatch, index: torch.Tensor) -> SequenceBatch:
    """The behaviors at ``index`` (int64 ``[B, K]``) of every row: a ``[B, K]`` :class:`SequenceBatch`."""
    J = seq.cross.shape[-1]
    return SequenceBatch(item_id=seq.item_id.gather(1, index),
                         cross=seq.cross.gather(1, index[..., None].expand(-1, -1, J)),
                         size=seq.size.gather(1, index), mask=seq.mask.gather(1, index))


# -- ESU: multi-head target attention -------------------------------------------------------------------
class MultiHeadTargetAttention(nn.Module):
    """``head_a = softmax(alpha_a)^T (K W_v_a)``, ``out = concat(heads) W_o``.

    The weighted sum is taken before the value projection (``(p^T K) W_v`` = ``p^T (K W_v)`` by linearity),
    so the cost is ``K * D * H`` instead of ``K * D * H * d_v``.
    """

    def __init__(self, value_dim: int, num_heads: int, head_dim: int, null_slot: bool = False,
                 evidence: bool = False):
        super().__init__()
        self.num_heads, self.head_dim, self.evidence = num_heads, head_dim, evidence
        self.value_weight = nn.Parameter(torch.empty(num_heads, value_dim, head_dim))  # W_v
        nn.init.xavier_uniform_(self.value_weight.view(-1, head_dim))
        self.out = nn.Linear(num_heads * head_dim, num_heads * head_dim, bias=False)  # W_o
        # Optional "nothing relevant" slot: a zero value with a learned score per head joins the softmax, so
        # the weights of the real items may sum to less than 1 when none of them scores well.
        self.null_logit = nn.Parameter(torch.zeros(num_heads)) if null_slot else None

    @property
    def out_dim(self) -> int:
        return self.num_heads * self.head_dim + (self.num_heads if self.evidence else 0)

    def weights(self, alpha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The attention weights: alpha float ``[B, K, H]``, mask bool ``[B, K]`` -> float ``[B, K, H]``
        (the softmax over the real items, joined by the null slot when there is one, whose share is dropped)."""
        if self.null_logit is None:
            return masked_softmax(alpha, mask)
        B, K, H = alpha.shape
        joined = torch.cat([alpha, self.null_logit.expand(B, 1, H)], dim=1)  # [B, K + 1, H]
        return masked_softmax(joined, torch.cat([mask, mask.new_ones(B, 1)], dim=1))[:, :K]

    def forward(self, alpha: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """alpha float ``[B, K, H]``, values ``[B, K, D]``, mask bool ``[B, K]`` -> float ``[B, out_dim]``.

        A row without any real item yields zeros (W_o has no bias). With ``evidence``, each head's
        ``logsumexp`` of alpha over the real items follows (0 for a row without any): the softmax forgets how
        strongly the kept items scored, and this says it (how much relevant history there is)."""
        B = alpha.shape[0]
        weights = self.weights(alpha, mask)  # [B, K, H]
        pooled = torch.bmm(weights.transpose(1, 2), values)  # [B, H, D]
        heads = torch.bmm(pooled.transpose(0, 1), self.value_weight)  # [H, B, d_v]
        out = self.out(heads.transpose(0, 1).reshape(B, -1))  # concat heads: [B, H * d_v]
        if not self.evidence:
            return out
        real = mask[..., None]
        total = torch.logsumexp(alpha.masked_fill(~real, float("-inf")), dim=1)  # [B, H]; -inf without items
        return torch.cat([out, torch.where(real.any(dim=1), total, 0.0)], dim=-1)


class TargetAttention(nn.Module):
    """Classic multi-head target attention: keys and values are the full behavior features.

    Used by the short-term module (last 50 raw behaviors) and as the ESU of SIM and ETA, as in those papers.
    """

    def __init__(self, features: FeatureEmbeddings, num_heads: int, head_dim: int):
        super().__init__()
        self.score = RelevanceScore(features.full_dim, features.inherent_dim, num_heads, head_dim)
        self.attention = MultiHeadTargetAttention(features.full_dim, num_heads, head_dim)

    @property
    def out_dim(self) -> int:
        return self.attention.out_dim

    def forward(self, features: FeatureEmbeddings, query: torch.Tensor, seq: SequenceBatch) -> torch.Tensor:
        """query float ``[B, D_h]``, seq ``[B, K]`` -> float ``[B, H * d_v]``."""
        keys = features.full(seq.item_id, features.cross_rows(seq.cross))  # [B, K, D]
        alpha = self.score(keys, self.score.query_kernel(query))  # [B, K, H]
        return self.attention(alpha, keys, seq.mask)


class ExactMatch(nn.Module):
    """The attribute-aware term: ``match_a = sum_f gamma[f, a] * 1[target's value of f == behavior's]``.

    ``f`` runs over inherent categoricals (category, author, ...); code 0 (unknown) never matches. A virtual
    item carries its representative's values (with clusters split by a categorical, those are every
    member's). The term joins alpha in both stages, so GSU and ESU stay consistent; it is cacheable at
    serving time (the behaviors' codes are per item). ``gamma`` (``[F, H]``) starts at ``init``.
    """

    def __init__(self, features: FeatureEmbeddings, names: tuple[str, ...], num_heads: int, init: float):
        super().__init__()
        located = [features.categorical_column(name) for name in names]
        self.names = tuple(names)
        self.register_buffer("columns", torch.tensor([c for c, _ in located], dtype=torch.int64), persistent=False)
        self.register_buffer("unknown_rows", torch.tensor([r for _, r in located], dtype=torch.int64),
                             persistent=False)
        self.weight = nn.Parameter(torch.full((len(names), num_heads), float(init)))  # gamma

    def codes(self, features: FeatureEmbeddings, item_id: torch.Tensor) -> torch.Tensor:
        """The items' values as feature rows: int64 ``[...]`` ids -> int64 ``[..., F]`` (equal row = equal value)."""
        return features.item_feature_rows[item_id].index_select(-1, self.columns)

    def forward(self, target_codes: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """target_codes int64 ``[B, F]``, behaviors' codes ``[B, L, F]`` -> float ``[B, L, H]``."""
        equal = (codes == target_codes[:, None]) & (target_codes != self.unknown_rows)[:, None]  # [B, L, F]
        return equal.to(self.weight.dtype) @ self.weight


@dataclass
class GsuTrace:
    """The GSU's choice, the parts of its score and the ESU's weights (see :meth:`TwinAttention.trace`).

    Attributes:
        index: int64 ``[B, K]`` chosen positions (walk order); valid: bool ``[B, K]`` real behaviors.
        relevance: float ``[B, L, H]`` the target-aware term ``(K_h W_h)(q W_q)^T / sqrt(d_k)``.
        cross_bias: float ``[B, L, H]`` the per-behavior bias ``(K_c W_c) beta``.
        match: float ``[B, L, H]`` the exact-match term (zeros under ``relevance: paper``).
        esu_weight: float ``[B, K, H]`` the ESU's softmax weight of each chosen position (``ln n``
            included; 0 at padding; the null slot's share, if any, is what is missing from 1).
    """

    index: torch.Tensor
    valid: torch.Tensor
    relevance: torch.Tensor
    cross_bias: torch.Tensor
    match: torch.Tensor
    esu_weight: torch.Tensor


class TwinAttention(nn.Module):
    """TWIN's consistency-preserving two-stage attention: one set of parameters scores the whole sequence
    (GSU, hard top-k) and attends over the chosen k (ESU).

    The GSU runs without autograd: the choice is hard and gets no gradient, and the ESU recomputes the
    (identical) scores of the k chosen behaviors with autograd. So backward touches k behaviors, not L,
    and no L-long activation is kept for it.

    Options beyond the paper (each off gives the paper's form): ``match_features`` adds the
    :class:`ExactMatch` term to alpha; ``attention_dim`` gives the score its own embedding tables (DARE's
    :class:`~twinv2.models.embeddings.AttentionEmbeddings`) instead of the representation's K_h. Values are
    always the representation's ``[K_h, K_c]``.
    """

    def __init__(self, features: FeatureEmbeddings, num_heads: int, head_dim: int, init: str = "xavier",
                 beta_init: float = 1.0, null_slot: bool = False, input_std: float = 0.05,
                 match_features: tuple[str, ...] = (), match_init: float = 1.0, attention_dim: int | None = None,
                 evidence: bool = False):
        super().__init__()
        self.keys = None if attention_dim is None else AttentionEmbeddings(features, attention_dim, input_std)
        key_dim = features.inherent_dim if self.keys is None else self.keys.dim
        self.score = RelevanceScore(key_dim, key_dim, num_heads, head_dim, num_cross=features.num_cross,
                                    cross_dim=features.feature_dim, init=init, beta_init=beta_init,
                                    input_std=input_std)
        self.match = ExactMatch(features, match_features, num_heads, match_init) if match_features else None
        self.attention = MultiHeadTargetAttention(features.full_dim, num_heads, head_dim, null_slot=null_slot,
                                                  evidence=evidence)

    @property
    def out_dim(self) -> int:
        return self.attention.out_dim

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The score's own embedding tables (DARE), for the embedding optimiser; empty otherwise."""
        return [] if self.keys is None else self.keys.embedding_parameters()

    def key_blocks(self, features: FeatureEmbeddings, item_id: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The score's key for items ``[...]``, as column blocks: K_h, or DARE's attention embedding."""
        return features.inherent_blocks(item_id) if self.keys is None else self.keys.blocks(features, item_id)

    def score_query(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor
                    ) -> torch.Tensor:
        """The query the score reads: ``query`` (K_h of the target, ``[B, D_h]``) or its attention embedding."""
        return query if self.keys is None else torch.cat(self.keys.blocks(features, target_item), dim=-1)

    def target_codes(self, features: FeatureEmbeddings, target_item: torch.Tensor) -> torch.Tensor | None:
        """The target's matched values (int64 ``[B, F]``), or None without the match term."""
        return None if self.match is None else self.match.codes(features, target_item)

    def scores(self, features: FeatureEmbeddings, kernel: torch.Tensor, table: torch.Tensor,
               item_id: torch.Tensor, rows: torch.Tensor, target_codes: torch.Tensor | None = None) -> torch.Tensor:
        """alpha (no ln n, no mask): kernel ``[B, D_k, H]``, table ``[R_c, H]``, item_id ``[B, L]``,
        rows ``[B, L, J]``, target_codes ``[B, F]`` (needed with the match term) -> float ``[B, L, H]``."""
        alpha = self.score(self.key_blocks(features, item_id), kernel, cross_bias(table, rows))
        if self.match is not None:
            alpha = alpha + self.match(target_codes, self.match.codes(features, item_id))
        return alpha

    @torch.no_grad()
    def trace(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
              seq: SequenceBatch, k: int, use_log_size: bool) -> GsuTrace:
        """What the GSU sees and picks and how the ESU weighs it, for diagnostics: the same scores, merge and
        softmax as :meth:`forward`.

        query float ``[B, D_h]``, target_item int64 ``[B]``, seq ``[B, L]`` -> :class:`GsuTrace` with the
        ``min(k, L)`` chosen positions, the terms of alpha over the whole sequence (before ``ln n`` and
        masking) and the ESU weights of the chosen.
        """
        kernel = self.score.query_kernel(self.score_query(features, query, target_item))  # [B, D_k, H]
        table = features.cross_projection_table(self.score.cross_weights())  # [R_c, H]
        relevance = self.score(self.key_blocks(features, seq.item_id), kernel)  # [B, L, H]
        bias = cross_bias(table, features.cross_rows(seq.cross))  # [B, L, H]
        match = torch.zeros_like(relevance) if self.match is None else \
            self.match(self.target_codes(features, target_item), self.match.codes(features, seq.item_id))
        alpha = cluster_aware_scores(relevance + bias + match, seq.size, seq.mask, use_log_size)
        index, valid = topk_merge(alpha, seq.mask, k)
        chosen = alpha.gather(1, index[..., None].expand(-1, -1, alpha.shape[-1]))
        return GsuTrace(index=index, valid=valid, relevance=relevance, cross_bias=bias, match=match,
                        esu_weight=self.attention.weights(chosen, valid))

    def forward(self, features: FeatureEmbeddings, query: torch.Tensor, target_item: torch.Tensor,
                seq: SequenceBatch, k: int, use_log_size: bool) -> torch.Tensor:
        """GSU over ``seq`` ``[B, L]`` keeping ``k``, then the ESU: query ``[B, D_h]`` (the target's K_h),
        target_item int64 ``[B]`` -> float ``[B, H * d_v]``."""
        L = seq.item_id.shape[1]
        kernel = self.score.query_kernel(self.score_query(features, query, target_item))  # [B, D_k, H]
        table = features.cross_projection_table(self.score.cross_weights())  # [R_c, H]
        target_codes = self.target_codes(features, target_item)
        rows = features.cross_rows(seq.cross)  # [B, L, J]
        if k < L:
            with torch.no_grad():
                alpha = self.scores(features, kernel, table, seq.item_id, rows, target_codes)
                alpha = cluster_aware_scores(alpha, seq.size, seq.mask, use_log_size)
                index, _ = topk_merge(alpha, seq.mask, k)  # [B, k]
            chosen = gather_positions(seq, index)
            rows = rows.gather(1, index[..., None].expand(-1, -1, rows.shape[-1]))
        else:  # the whole sequence fits in the ESU: nothing to choose
            chosen = seq
        inherent = features.inherent(chosen.item_id)  # [B, k, D_h]: the values' first block
        keys = inherent if self.keys is None else self.keys.blocks(features, chosen.item_id)
        alpha = self.score(keys, kernel, cross_bias(table, rows))
        if self.match is not None:
            alpha = alpha + self.match(target_codes, self.match.codes(features, chosen.item_id))
        alpha = cluster_aware_scores(alpha, chosen.size, chosen.mask, use_log_size)  # [B, k, H]
        values = torch.cat([inherent, features.cross(rows)], dim=-1)  # [B, k, D_h + J F]
        return self.attention(alpha, values, chosen.mask)


# -- MLP ------------------------------------------------------------------------------------------------
class FeaturePReLU(nn.Module):
    """PReLU with one learnable slope per feature of the LAST dim (``nn.PReLU`` uses dim 1, which is the
    sequence axis for ``[B, L, D]`` inputs)."""

    def __init__(self, width: int, init: float = 0.25):
        super().__init__()
        self.weight = nn.Parameter(torch.full((width,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x >= 0, x, self.weight * x)


class MLP(nn.Module):
    """Linear -> PReLU blocks, then a final Linear: float ``[..., in_dim]`` -> ``[..., out_dim]``."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), FeaturePReLU(width)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# -- slow reference implementations (pure Python; the tests compare the fast paths with these) ----------
def reference_topk_merge(alpha: list[list[list[float]]], mask: list[list[bool]],
                         k: int) -> tuple[list[list[int]], list[list[bool]]]:
    """Round-robin merge written as plainly as possible: ``alpha[b][i][a]``, ``mask[b][i]``.

    Each head ranks its real behaviors by descending score (ties by position), then the padding positions
    in increasing order; the walk visits rank 0 of heads 0..H-1, rank 1, ... skipping positions already
    taken, until ``min(k, L)`` are taken.
    """
    indices, valids = [], []
    for row_alpha, row_mask in zip(alpha, mask, strict=True):
        L, H = len(row_alpha), len(row_alpha[0])
        real = [i for i in range(L) if row_mask[i]]
        padding = [i for i in range(L) if not row_mask[i]]
        rankings = [sorted(real, key=lambda i, a=a: (-row_alpha[i][a], i)) + padding for a in range(H)]
        taken: list[int] = []
        for r in range(L):
            for a in range(H):
                pos = rankings[a][r]
                if pos not in taken and len(taken) < min(k, L):
                    taken.append(pos)
        indices.append(taken)
        valids.append([row_mask[i] for i in taken])
    return indices, valids


def reference_twin_scores(keys: list[list[float]], cross: list[list[list[float]]], query: list[float],
                          key_weight: list, query_weight: list, cross_weight: list,
                          cross_beta: list) -> list[list[float]]:
    """alpha[i][a] for one sample by the formula, loop by loop.

    keys[i][d]: K_h; cross[i][j][f]: K_c per channel; query[d]; key_weight[a][d][e] = W_h;
    query_weight[a][d][e] = W_q; cross_weight[a][j][f] = w; cross_beta[a][j] = beta.
    """
    H, d_k = len(key_weight), len(key_weight[0][0])
    out = []
    for i in range(len(keys)):
        row = []
        for a in range(H):
            kh = [sum(keys[i][d] * key_weight[a][d][e] for d in range(len(keys[i]))) for e in range(d_k)]
            qh = [sum(query[d] * query_weight[a][d][e] for d in range(len(query))) for e in range(d_k)]
            inherent = sum(x * y for x, y in zip(kh, qh, strict=True)) / math.sqrt(d_k)
            bias = sum(cross_beta[a][j] * sum(cross[i][j][f] * cross_weight[a][j][f] for f in range(len(cross[i][j])))
                       for j in range(len(cross[i])))
            row.append(inherent + bias)
        out.append(row)
    return out


def reference_match(target_codes: list[int], codes: list[list[int]], unknown: list[int],
                    weight: list[list[float]]) -> list[list[float]]:
    """The exact-match term for one sample, loop by loop: ``out[i][a] = sum_f weight[f][a] *
    [target_codes[f] == codes[i][f] and target_codes[f] != unknown[f]]``."""
    H = len(weight[0]) if weight else 0
    return [[sum(weight[f][a] for f in range(len(target_codes))
                 if target_codes[f] == codes[i][f] and target_codes[f] != unknown[f]) for a in range(H)]
            for i in range(len(codes))]


def reference_esu(alpha: list[list[float]], values: list[list[float]], mask: list[bool], sizes: list[float],
                  use_log_size: bool, value_weight: list, out_weight: list) -> list[float]:
    """ESU output for one sample: per head ``softmax(alpha_a + ln n)`` over real items, weighted sum of
    ``values W_v_a``, concatenated heads times ``W_o``. ``out_weight[o][c]`` as in ``nn.Linear``."""
    H, d_v = len(value_weight), len(value_weight[0][0])
    concat: list[float] = []
    for a in range(H):
        real = [i for i in range(len(values)) if mask[i]]
        logits = {i: alpha[i][a] + (math.log(sizes[i]) if use_log_size else 0.0) for i in real}
        top = max(logits.values()) if logits else 0.0
        z = sum(math.exp(v - top) for v in logits.values())
        head = [0.0] * d_v
        for i in real:
            p = math.exp(logits[i] - top) / z
            projected = [sum(values[i][d] * value_weight[a][d][e] for d in range(len(values[i]))) for e in range(d_v)]
            head = [h + p * v for h, v in zip(head, projected, strict=True)]
        concat += head
    return [sum(w * c for w, c in zip(row, concat, strict=True)) for row in out_weight]

"""Request-time scoring: one user, B candidates, with TWIN's projection cache (DESIGN §2.1, §7).

The target-independent half of TWIN's relevance score, ``K_h W_h`` per head, depends only on the item, so
:class:`ProjectionCache` computes it once per model version for every item id (a virtual item carries its
representative's id, so the same rows serve it), together with the cross-bias table (each cross bucket's
scalar per head). A request then costs:

- GSU: the user's L cached key projections are gathered once, each augmented with one more column holding
  the behavior's cross bias plus ``ln n``; the candidates' query projections get a matching column of ones.
  alpha for every candidate and head is then ONE batched product ``(B x (d_k + 1)) @ ((d_k + 1) x L)`` per
  head (the bias rides along for free), then each head's top k and the shared
  :func:`~twinv2.models.attention.topk_merge` over their union (:func:`_gsu_merge`). Candidates go in
  chunks of 32 so each chunk's ``[H, chunk, L]`` scores stay in cache.
- ESU, short-term module and MLP: the model's own modules (``RelevanceScore``, ``MultiHeadTargetAttention``,
  the short-term ``TargetAttention``'s score and attention, the MLP head) on ``[B, k]`` and ``[B, S]``
  inputs, as :meth:`twinv2.models.CTRModel.forward` calls them; the behaviors' features ``[K_h, K_c]`` and
  cross bias are looked up once per request and gathered per candidate.

The scorer runs where the model's parameters are (CPU or CUDA): requests come in as CPU tensors, are
moved there, and scores and explanations come back on the CPU.

So a score equals the training forward on the same inputs (the test checks 1e-5). Models without TWIN's
GSU (SIM, ETA, SDIM, DIN, average pooling) are scored by the model's forward on the request as a batch
(:meth:`Scorer.score_forward`), which is also the "naive" baseline of ``benchmarks/serve_latency.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from twinv2.data.batches import Batch, SequenceBatch
from twinv2.errors import ConfigError
from twinv2.models import CTRModel
from twinv2.models.attention import ExactMatch, cluster_aware_scores, cross_bias, topk_merge
from twinv2.models.twin import TwinLongTerm

__all__ = ["Explanation", "ProjectionCache", "Scorer"]

_CACHE_BLOCK = 65_536  # items per block when building the cache (bounds the [block, D_h] temporary)


class ProjectionCache:
    """``K_h W_h`` of every item and head, plus the cross-bias table, for one model version.

    With DARE's decoupled attention embeddings the cached key is the attention table's projection
    (``K_att W_h``); with the exact-match term each item's matched values are cached too.

    Attributes:
        key_proj: float32 ``[H, N + 1, d_k]`` (row 0 = the padding / unknown item).
        cross_table: float32 ``[R_c, H]`` each cross bucket's bias per head.
        match_codes: int64 ``[N + 1, F]`` each item's matched values (feature rows), or None.
    """

    def __init__(self, model: CTRModel):
        twin = model.long_term.twin
        features = model.features
        device = features.item_feature_rows.device
        with torch.no_grad():
            n = features.num_items + 1
            blocks = []
            for start in range(0, n, _CACHE_BLOCK):
                ids = torch.arange(start, min(n, start + _CACHE_BLOCK), device=device)
                keys = torch.cat(twin.key_blocks(features, ids), dim=-1)  # [block, D_k]
                blocks.append(twin.score.project_keys(keys))  # [H, block, d_k]
            self.key_proj = torch.cat(blocks, dim=1).contiguous()  # [H, N + 1, d_k]
            self.cross_table = features.cross_projection_table(twin.score.cross_weights()).contiguous()
            self.match_codes = None if twin.match is None else \
                twin.match.codes(features, torch.arange(n, device=device)).contiguous()

    @property
    def num_items(self) -> int:
        """Rows cached (items + the padding row)."""
        return int(self.key_proj.shape[1])

    @property
    def nbytes(self) -> int:
        tensors = [self.key_proj, self.cross_table] + ([] if self.match_codes is None else [self.match_codes])
        return sum(t.numel() * t.element_size() for t in tensors)


@dataclass
class Explanation:
    """The long-term entries with the largest ESU weight for each candidate.

    Attributes:
        positions: int64 ``[B, m]`` positions in the long sequence (``-1`` where fewer than m exist).
        weights: float32 ``[B, m]`` ESU weight (softmax of ``alpha + ln n``, averaged over heads).
        matched: bool ``[B, m, F]`` which of the exact-match term's categoricals the entry shares with the
            candidate (``F = 0`` without the term); match_names: their names, in order.
    """

    positions: torch.Tensor
    weights: torch.Tensor
    matched: torch.Tensor
    match_names: tuple[str, ...] = ()


def _map(seq: SequenceBatch, fn: Callable[[torch.Tensor], torch.Tensor]) -> SequenceBatch:
    """Apply ``fn`` to every tensor field of ``seq`` (optional fields that are None stay None)."""
    return SequenceBatch(**{f.name: None if getattr(seq, f.name) is None else fn(getattr(seq, f.name))
                            for f in fields(seq)})


def _expand(seq: SequenceBatch, B: int) -> SequenceBatch:
    """A ``[1, L]`` sequence viewed as ``[B, L]`` (no copy)."""
    return _map(seq, lambda t: t.expand(B, *t.shape[1:]))


def _take(seq: SequenceBatch, positions: torch.Tensor) -> SequenceBatch:
    """Positions ``positions`` (int64 ``[n]``) of a ``[1, L]`` sequence: ``[1, n]``."""
    return _map(seq, lambda t: t[:, positions])


def _gsu_merge(alpha: torch.Tensor, k: int) -> torch.Tensor:
    """:func:`topk_merge` over all-real positions, from scores laid out ``[H, c, n]`` (``n > k``).

    The merge reads nothing but each head's k best positions, so it is run on their union only: each
    head's top k over the contiguous last axis (no ``[c, n, H]`` copy, no padding mask over all n), then
    the shared :func:`topk_merge` over the ``<= k H`` distinct positions (repeats masked out), mapped back.
    Same choice as ``topk_merge(alpha.permute(1, 2, 0), mask, k)``. Returns int64 ``[c, k]`` positions.
    """
    H, c, n = alpha.shape
    ranked = alpha.topk(k, dim=2, sorted=False).indices  # [H, c, k] (any order: the merge re-ranks)
    union = ranked.permute(1, 0, 2).reshape(c, H * k)  # [c, kH] positions, head by head
    # A position several heads chose appears once: its first occurrence stays, the repeats are masked.
    step = torch.arange(H * k, device=alpha.device).expand(c, -1)
    first = torch.full((c, n), H * k, dtype=torch.int64, device=alpha.device).scatter_reduce_(1, union, step,
                                                                                              reduce="amin")
    repeat = first.gather(1, union) != step
    sub = alpha.gather(2, union.expand(H, -1, -1))  # [H, c, kH]: the scores at those positions
    index, _ = topk_merge(sub.permute(1, 2, 0), ~repeat, k)  # [c, k] into the union
    return union.gather(1, index)


class _MatchIndex:
    """The behaviors of one request sorted by each matched categorical, so that a candidate's matches are a
    contiguous run found by binary search: the GSU adds ``gamma[f]`` at the matching (candidate, behavior)
    pairs only, a cost that grows with the number of matches instead of ``B x L`` per feature.

    Args:
        match: the model's :class:`ExactMatch`; codes: int64 ``[n, F]`` the behaviors' values (feature rows).
    """

    def __init__(self, match: ExactMatch, codes: torch.Tensor):
        self.match = match
        self.order = torch.argsort(codes, dim=0, stable=True)  # [n, F]
        self.sorted = codes.gather(0, self.order)  # [n, F]

    def add_to(self, alpha: torch.Tensor, cand_codes: torch.Tensor) -> None:
        """``alpha[a, c, i] += gamma[f, a]`` wherever candidate c's value of f equals behavior i's (and is
        known): alpha float ``[H, c, n]`` in place, cand_codes int64 ``[c, F]``. The same sums as the dense
        ``alpha + sum_f gamma[f] * 1[equal]`` of training (adding 0 elsewhere changes nothing)."""
        weight = self.match.weight.to(alpha.dtype)  # [F, H]
        for f in range(cand_codes.shape[1]):
            col = self.sorted[:, f].contiguous()
            lo = torch.searchsorted(col, cand_codes[:, f], side="left")
            hi = torch.searchsorted(col, cand_codes[:, f], side="right")
            count = torch.where(cand_codes[:, f] != self.match.unknown_rows[f], hi - lo, 0)  # [c]
            total = int(count.sum())
            if not total:
                continue
            cand = torch.repeat_interleave(torch.arange(len(count), device=alpha.device), count)  # [P]
            start = torch.repeat_interleave(lo, count)
            step = torch.arange(total, device=alpha.device) - torch.repeat_interleave(count.cumsum(0) - count, count)
            pos = self.order[start + step, f]  # [P] matching behaviors
            alpha[:, cand, pos] += weight[f][:, None]


class Scorer:
    """Scores B candidate items for one user's sequences with a trained :class:`CTRModel`.

    Example:
        >>> scorer = Scorer(model)  # doctest: +SKIP
        >>> logits = scorer.score(seqs.long, seqs.short, torch.tensor([3, 17, 42]))  # doctest: +SKIP

    Args:
        model: the model (put in eval mode); the scorer computes on the device of its parameters.
        chunk: candidates per GSU chunk (keeps ``[H, chunk, L]`` scores cache-resident).
        esu_chunk: candidates per ESU / short-term / MLP chunk (bounds the ``[chunk, k, D]`` gathers).
    """

    def __init__(self, model: CTRModel, chunk: int = 32, esu_chunk: int = 256):
        self.model = model.eval()
        self.chunk, self.esu_chunk = int(chunk), int(esu_chunk)
        self.cached = isinstance(model.long_term, TwinLongTerm)
        self.cache = ProjectionCache(model) if self.cached else None
        self.device = model.features.item_feature_rows.device

    @property
    def num_items(self) -> int:
        return self.model.features.num_items

    # -- the forward path (any model; the naive baseline) --------------------------------------------
    @torch.no_grad()
    def score_forward(self, long: SequenceBatch, short: SequenceBatch, candidates: torch.Tensor,
                      chunk: int = 64) -> torch.Tensor:
        """Logits float32 ``[B]`` by the model's own forward on the request as a batch of B samples.

        Every sample re-gathers and re-projects its whole long sequence (no cache); chunks of ``chunk``
        candidates bound the memory. Inputs: long ``[1, L]``, short ``[1, S]``, candidates int64 ``[B]``.
        """
        long, short = long.to(self.device), short.to(self.device)
        candidates = candidates.to(self.device)
        out = []
        for start in range(0, len(candidates), chunk):
            target = candidates[start:start + chunk]
            c = len(target)
            zeros = torch.zeros(c, dtype=torch.int64, device=self.device)
            batch = Batch(user_id=zeros, ts=zeros, target_item=target, label=zeros.float(), history_length=zeros,
                          long=_expand(long, c), short=_expand(short, c))
            out.append(self.model(batch))
        return torch.cat(out).cpu() if out else torch.zeros(0)

    # -- the cached path (twin, twinv2) -----------------------------------------------------------------
    @torch.no_grad()
    def score(self, long: SequenceBatch, short: SequenceBatch, candidates: torch.Tensor,
              explain: int = 0) -> tuple[torch.Tensor, Explanation | None]:
        """Logits float32 ``[B]`` for ``candidates`` (int64 ``[B]``), and optionally an explanation.

        Args:
            long: ``[1, L]`` and short: ``[1, S]`` sequences (from :func:`~twinv2.serve.sequences.user_sequences`).
            candidates: item ids in ``[0, num_items]`` (0 = the unknown item).
            explain: if > 0, also return the ``explain`` long-term entries of largest ESU weight per candidate.
        """
        if not self.cached:
            if explain:
                raise ConfigError("explanations need a twin, twinv2 or dare model")
            return self.score_forward(long, short, candidates), None
        assert self.cache is not None
        device = self.device
        long, short, candidates = long.to(device), short.to(device), candidates.to(device)
        model, features = self.model, self.model.features
        lt: TwinLongTerm = model.long_term  # type: ignore[assignment]
        twin, k, use_log = lt.twin, model.config.esu_size, lt.use_log_size()
        B = len(candidates)
        H = twin.score.num_heads

        real = torch.nonzero(long.mask[0]).squeeze(1)  # [n] positions of real entries
        n = len(real)
        seq = _take(long, real if n else torch.zeros(1, dtype=torch.int64, device=device))  # [1, n] (or padding)
        # Per request, once for all candidates: the behaviors' full features, score keys, cross bias, ln n
        # and matched values.
        rows = features.cross_rows(seq.cross)  # [1, n, J]
        D_h = features.inherent_dim
        values = features.full(seq.item_id, rows)[0]  # [n, D]: K = [K_h, K_c], the ESU's values
        score_keys = values[:, :D_h] if twin.keys is None else torch.cat(twin.key_blocks(features, seq.item_id[0]), -1)
        bias = cross_bias(self.cache.cross_table, rows)[0]  # [n, H]
        codes = None if self.cache.match_codes is None else self.cache.match_codes[seq.item_id[0]]  # [n, F]
        cand_codes = None if codes is None else self.cache.match_codes[candidates]  # [B, F]
        if n > k:
            # GSU keys: cached projections plus one column for the bias and ln n: [H, d_k + 1, n].
            gsu_bias = cluster_aware_scores(bias[None], seq.size, seq.mask, use_log)[0]  # [n, H]
            keys = torch.cat([self.cache.key_proj[:, seq.item_id[0]], gsu_bias.t()[..., None]], dim=2)
            keys_t = keys.transpose(1, 2).contiguous()  # [H, d_k + 1, n]
        query = features.inherent(candidates)  # [B, D_h]
        score_query = twin.score_query(features, query, candidates)  # [B, D_k]
        # The short sequence is the same for every candidate: its keys are computed once, then the
        # short-term module's own score and attention run per chunk (TargetAttention.forward, keys hoisted).
        short_seq = _map(short, lambda t: t[:, :model.config.short_len])  # as CTRModel.forward truncates
        short_keys = features.full(short_seq.item_id, features.cross_rows(short_seq.cross))  # [1, S, D]
        st = model.short_term
        # GSU in small chunks (their [H, chunk, n] scores stay in cache), then the ESU, short-term module and
        # MLP in larger chunks (fewer, bigger operations).
        if n > k and B:
            match_index = None if codes is None else _MatchIndex(twin.match, codes)
            chunks = []
            for start in range(0, B, self.chunk):
                q = score_query[start:start + self.chunk]
                ones = torch.ones(H, len(q), 1, device=device)
                alpha = torch.bmm(torch.cat([twin.score.project_query(q), ones], dim=2), keys_t)  # [H, c, n]
                if match_index is not None:
                    match_index.add_to(alpha, cand_codes[start:start + self.chunk])
                chunks.append(_gsu_merge(alpha, k))  # [c, k]
            index = torch.cat(chunks)
        else:  # the whole sequence fits in the ESU, as in TwinAttention.forward
            index = torch.arange(seq.item_id.shape[1], device=device).expand(B, -1)
        logits, expl_pos, expl_w, expl_match = [], [], [], []
        for start in range(0, B, self.esu_chunk):
            q = query[start:start + self.esu_chunk]  # [c, D_h]
            idx = index[start:start + self.esu_chunk]  # [c, k]
            c = len(q)
            # ESU over the chosen behaviors: the model's modules, as in TwinAttention.forward.
            chosen_values = values[idx]  # [c, k, D]
            chosen_mask = seq.mask[0][idx]
            kernel = twin.score.query_kernel(score_query[start:start + self.esu_chunk])  # [c, D_k, H]
            alpha = twin.score(score_keys[idx], kernel, bias[idx])  # [c, k, H]
            if codes is not None:
                alpha = alpha + twin.match(cand_codes[start:start + self.esu_chunk], codes[idx])
            esu_alpha = cluster_aware_scores(alpha, seq.size[0][idx], chosen_mask, use_log)  # [c, k, H]
            long_out = twin.attention(esu_alpha, chosen_values, chosen_mask)  # [c, H * d_v]
            sk = short_keys.expand(c, -1, -1)  # [c, S, D]
            short_out = st.attention(st.score(sk, st.score.query_kernel(q)), sk, short_seq.mask.expand(c, -1))
            logits.append(model.head(torch.cat([q, long_out, short_out], dim=-1)).squeeze(-1))
            if explain:
                weight = twin.attention.weights(esu_alpha, chosen_mask).mean(dim=2)  # [c, k]
                m = min(explain, weight.shape[1])
                top_w, top_i = weight.topk(m, dim=1)
                pos = real[idx.gather(1, top_i)] if n else torch.full_like(top_i, -1)
                pos = torch.where(top_w > 0, pos, torch.full_like(pos, -1))
                expl_pos.append(pos)
                expl_w.append(top_w)
                if codes is None:
                    expl_match.append(torch.zeros(c, m, 0, dtype=torch.bool, device=device))
                else:
                    entry_codes = codes[idx.gather(1, top_i)]  # [c, m, F]
                    cand = cand_codes[start:start + self.esu_chunk, None]  # [c, 1, F]
                    expl_match.append((entry_codes == cand) & (cand != twin.match.unknown_rows) & (pos >= 0)[..., None])
        out = torch.cat(logits).cpu() if logits else torch.zeros(0)
        if not explain:
            return out, None
        names = () if twin.match is None else twin.match.names
        if not expl_pos:  # no candidates
            return out, Explanation(torch.zeros(0, 0, dtype=torch.int64), torch.zeros(0, 0),
                                    torch.zeros(0, 0, len(names), dtype=torch.bool), names)
        return out, Explanation(torch.cat(expl_pos).cpu(), torch.cat(expl_w).cpu(), torch.cat(expl_match).cpu(),
                                names)

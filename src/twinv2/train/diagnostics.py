"""Retrieval diagnostics of the two-stage models: is the GSU target-aware, does the ESU use what it kept,
and how good is the kept set against the data's true relevance?

For a set of samples, compares what the GSU of a learned-GSU model (``twin``, ``twinv2``, ``dare``: any
long-term module with ``gsu_trace``) keeps with what a category filter (``sim_hard``'s search) would keep,
and breaks the selected scores into their terms:

- ``category_hit_rate``: share of the kept behaviors whose category equals the target's (precision);
- ``category_share_in_long``: that share over the whole GSU input L (what a random choice would get);
  ``retrieval_lift`` = hit rate / share in L;
- ``category_recall``: kept same-category behaviors / ``min(k, same-category behaviors in L)``, summed
  over samples; ``sim_hard`` recalls all of them by construction (recall 1, precision 1 where any exist);
- ``relevance_abs``, ``cross_bias_abs``, ``match_abs``, ``log_size_abs``: mean absolute size, over the
  kept behaviors and heads, of the target-aware term, the cross-feature bias, the exact-match term (0 under
  ``relevance: paper``) and ``ln n`` (0 for twin);
- ``virtual_share``: share of virtual items (clusters) among the kept behaviors (twinv2);
- ``selected_age_days_median`` and ``long_age_days_median``: median age of the kept behaviors and of all
  of L, in days before the request.

**The ESU's weight on matching behaviors.** The ESU's softmax weight of each kept position, averaged over
heads, summed over the kept items of the target's category, is the share of the ESU's attention that goes
to them (the "mass"). ``esu_weight_same_category`` is its mean over the samples with at least one such item
kept (``esu_weight_samples`` of them); ``esu_weight_same_category_uniform`` is what a uniform ESU would
give on the same samples (kept same-category / kept): a selective ESU is well above it.

**Where the life cycle should pay.** Each diagnosed sample gets its headroom bucket
(:func:`twinv2.data.headroom.sample_headroom_buckets` at L: the previous behavior of the target's category
within 50, within L, beyond L or never); ``bucket_counts`` counts them. For the ``beyond_L`` samples (no
behavior of the target's category among the L most recent raw behaviors):
``beyond_L_same_category_kept_share`` = share of them where the GSU kept an item of the target's category
(0 for a model over the L most recent raw behaviors, by construction); ``beyond_L_virtual_kept_share`` =
share where that item is a virtual item (None for raw sequences, which have none);
``beyond_L_esu_weight_same_category`` = mean ESU mass on such items over all beyond-L samples (0 where none
was kept) and ``beyond_L_esu_weight_when_kept`` = the same over those where one was kept.

**Ground-truth retrieval quality** (synthetic data only: a dataset folder with
``ground_truth/item_latent.npy``, the generator's true item vectors; every ``gt_*`` key is None otherwise).
The true relevance of a behavior to the target is ``max(0, cos(v_behavior, v_target))`` of the two items'
latent vectors: the generator draws both the target's click and the user's interest from these vectors, so
a behavior whose item points the same way carries evidence on the target; a virtual item is scored by its
representative item. With gains ``g`` in the GSU's pick order (``r = 0..K-1``, ``K = min(k, L)``)::

    DCG@k = sum_r g_r / log2(r + 2);   NDCG@k = DCG@k / (DCG@k of the K largest gains of the sequence)

over samples whose sequence has a positive gain (``gt_samples``). The pick order is the GSU's own
(TWIN's round-robin merge of the heads' rankings; recency for ``sim_hard``); padding counts 0, so a GSU that
keeps fewer than K items loses their share. Because the ESU is order-free, ``gt_gain_share`` gives the
order-free variant (sum of kept gains / sum of the K largest). NDCG is relative to the model's own sequence:
twinv2's L holds virtual items of the whole life cycle, so its ideal differs from a raw-L model's;
``gt_dcg`` (absolute, same gain scale for every model) compares the kept sets across models. On the same
samples, ``gt_ndcg_sim_hard`` (and ``gt_gain_share_sim_hard``, ``gt_dcg_sim_hard``) score ``sim_hard``'s
selection over the L most recent raw behaviors (its search from :mod:`twinv2.models.sim`, not learned, so
no trained model is needed) and ``gt_ndcg_recent`` the k most recent raw behaviors;
``gt_ndcg_by_bucket`` / ``gt_ndcg_sim_hard_by_bucket`` break them down by headroom bucket. The model's own
``gt_*`` are filled for learned GSUs and for search GSUs (``sim_hard``, ``sim_soft``, ``eta``).

Category = ``sim_hard``'s categorical (``ModelConfig.sim_category``, else ``category_id``, else the first
inherent categorical); unknown codes (0) match nothing, as in ``sim_hard``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from twinv2.data.batches import BatchBuilder, SequenceBatch, SequenceConfig
from twinv2.data.headroom import SAMPLE_BUCKETS, sample_headroom_buckets
from twinv2.data.split import Samples
from twinv2.data.store import Dataset
from twinv2.errors import ConfigError, DataValidationError
from twinv2.models import CTRModel
from twinv2.models.attention import topk_merge
from twinv2.models.base import RetrieveThenAttend
from twinv2.models.sim import SimHardLongTerm, resolve_sim_category

__all__ = ["GT_RELEVANCE", "gsu_kind", "has_learned_gsu", "load_item_latent", "ndcg_at_k", "retrieval_diagnostics",
           "true_relevance"]

_DAY = 86_400.0
_BEYOND_L = SAMPLE_BUCKETS.index("beyond_L")
_GATHER_ELEMENTS = 1 << 24  # true_relevance gathers at most this many latent values at a time (64 MB)
ITEM_LATENT_FILE = "ground_truth/item_latent.npy"  # twinv2.data.synth.truth.GROUND_TRUTH_FILES["item_latent"]
GT_RELEVANCE = ("max(0, cos(v_behavior, v_target)) of the generator's true item latent vectors "
                f"({ITEM_LATENT_FILE}); a virtual item is scored by its representative item")


def has_learned_gsu(model: CTRModel) -> bool:
    """True for models whose GSU is TWIN's learned score (``twin``, ``twinv2``, ``dare``): those whose
    long-term module has ``gsu_trace``."""
    return hasattr(model.long_term, "gsu_trace")


def gsu_kind(model: CTRModel) -> str | None:
    """``"learned"`` (TWIN's score), ``"search"`` (a fixed search: ``sim_hard``, ``sim_soft``, ``eta``) or
    None (no retrieval stage: ``din``, ``sdim``, ``avg_pool``)."""
    if has_learned_gsu(model):
        return "learned"
    if isinstance(model.long_term, RetrieveThenAttend):
        return "search"
    return None


def load_item_latent(dataset: Dataset) -> np.ndarray | None:
    """The generator's true item vectors, float32 ``[num_items + 1, D]`` (row 0 = padding), or None when
    the dataset folder has no ``ground_truth/item_latent.npy`` (imported data).

    Raises:
        DataValidationError: the file exists but is not one row per item of this dataset.
    """
    path = dataset.path / ITEM_LATENT_FILE
    if not path.is_file():
        return None
    latent = np.load(path, allow_pickle=False)
    rows = dataset.manifest.num_items + 1
    if latent.ndim != 2 or latent.shape[0] != rows or latent.dtype.kind != "f":
        raise DataValidationError(str(path), None, f"a float array of {rows} rows (items + padding) by D",
                                  f"{latent.dtype} of shape {latent.shape}")
    return latent.astype(np.float32, copy=False)


def true_relevance(latent: torch.Tensor, target_item: torch.Tensor, item_id: torch.Tensor,
                   mask: torch.Tensor) -> torch.Tensor:
    """Ground-truth gain of each behavior (:data:`GT_RELEVANCE`), 0 at padding.

    Args:
        latent: float ``[N + 1, D]`` true item vectors; target_item: int64 ``[B]``;
        item_id: int64 ``[B, L]`` behavior (or representative) items; mask: bool ``[B, L]``.
    Returns:
        float ``[B, L]`` in ``[0, 1]``.
    """
    unit = latent / latent.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # the padding row stays 0
    B, L = item_id.shape
    out = torch.empty(B, L, dtype=latent.dtype, device=latent.device)
    step = max(1, _GATHER_ELEMENTS // max(1, L * latent.shape[1]))  # rows per chunk: bounded [b, L, D] gathers
    for lo in range(0, B, step):
        hi = min(B, lo + step)
        v = unit[item_id[lo:hi]]  # [b, L, D]
        out[lo:hi] = torch.bmm(v, unit[target_item[lo:hi]][:, :, None]).squeeze(-1)  # [b, L]
    return out.clamp_min(0.0) * mask


def ndcg_at_k(gains: torch.Tensor, index: torch.Tensor, valid: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """NDCG@K of a kept set in pick order, its order-free gain share, and its DCG.

    Args:
        gains: float ``[B, L]`` non-negative true relevance of every position (0 at padding).
        index: int64 ``[B, K]`` kept positions in pick order (``K <= L``); valid: bool ``[B, K]`` (a slot
            that is False counts gain 0).
    Returns:
        ``(ndcg [B], gain_share [B], dcg [B])``: ``ndcg = DCG / IDCG`` with ``DCG = sum_r g_r / log2(r + 2)``
        and IDCG the DCG of the K largest gains of the row; ``gain_share`` = kept gains / the K largest
        gains; both NaN where the row has no positive gain.
    """
    K = index.shape[1]
    disc = 1.0 / torch.log2(torch.arange(K, device=gains.device, dtype=gains.dtype) + 2.0)  # [K]
    kept = gains.gather(1, index) * valid  # [B, K]
    dcg = (kept * disc).sum(dim=1)
    best = gains.topk(min(K, gains.shape[1]), dim=1).values  # [B, K] descending
    idcg = (best * disc[:best.shape[1]]).sum(dim=1)
    total = best.sum(dim=1)
    nan = torch.full_like(dcg, float("nan"))
    ndcg = torch.where(idcg > 0, dcg / idcg.clamp_min(1e-12), nan)
    share = torch.where(total > 0, kept.sum(dim=1) / total.clamp_min(1e-12), nan)
    return ndcg, share, dcg


def _search_choice(long_term: RetrieveThenAttend, features: Any, target_item: torch.Tensor,
                   seq: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """A search GSU's kept positions and validity, exactly as :meth:`RetrieveThenAttend.forward` picks them."""
    scores, searchable = long_term.search_scores(features, target_item, seq)
    return topk_merge(scores[..., None], searchable, long_term.config.esu_size)


class _Mean:
    """Running sum / count of per-sample values (NaN ignored), overall and per headroom bucket."""

    def __init__(self) -> None:
        self.sum = np.zeros(len(SAMPLE_BUCKETS) + 1)
        self.n = np.zeros(len(SAMPLE_BUCKETS) + 1)

    def add(self, values: torch.Tensor, bucket: np.ndarray | None) -> None:
        v = values.detach().double().cpu().numpy()
        ok = ~np.isnan(v)
        self.sum[-1] += v[ok].sum()
        self.n[-1] += ok.sum()
        if bucket is not None:
            np.add.at(self.sum, bucket[ok], v[ok])
            np.add.at(self.n, bucket[ok], 1)

    def mean(self) -> float | None:
        return float(self.sum[-1] / self.n[-1]) if self.n[-1] else None

    def by_bucket(self) -> dict[str, float | None]:
        return {name: float(self.sum[b] / self.n[b]) if self.n[b] else None for b, name in enumerate(SAMPLE_BUCKETS)}


@torch.no_grad()
def retrieval_diagnostics(model: CTRModel, builder: BatchBuilder, samples: Samples, *, batch_size: int = 1024,
                          max_samples: int | None = 5000, device: torch.device | str = "cpu",
                          seed: int = 0) -> dict[str, Any]:
    """GSU diagnostics of ``model`` over (a seeded subsample of at most ``max_samples`` of) ``samples``.

    Args:
        model: any CTR model; builder: the batch builder of its run (its ``long_len`` is L);
        samples: the samples to diagnose (e.g. the test window).
    Returns:
        A JSON-ready dict (keys in the module docstring, plus ``num_samples``, ``esu_size``, ``long_len``,
        ``category``, ``gsu``, ``learned_gsu``, ``same_category_in_long_mean``,
        ``share_without_same_category``, ``ground_truth``, ``gt_relevance``). For a model without a learned
        GSU the category and ESU keys are absent (``learned_gsu`` False); the ``gt_*`` keys of ``sim_hard``'s
        and the recent selection are there for every model on synthetic data.
    """
    index = np.arange(len(samples))
    if max_samples is not None and len(index) > max_samples:
        index = np.sort(np.random.default_rng(seed).choice(len(index), max_samples, replace=False))
    sub = samples.subset(index)
    dataset = builder.dataset
    features = model.features
    category = resolve_sim_category(model.config, features)
    codes = features.item_category(category).to(device)  # [N + 1]
    kind = gsu_kind(model)
    learned = kind == "learned"
    k = model.config.esu_size
    L = builder.config.long_len
    try:
        buckets = sample_headroom_buckets(dataset, sub, L, category).bucket  # int8 [n]
    except (DataValidationError, ConfigError):
        buckets = None
    latent_np = load_item_latent(dataset)
    latent = None if latent_np is None else torch.from_numpy(latent_np).to(device)
    # sim_hard's search and the recent-k baseline read the L most recent raw behaviors.
    raw_builder = builder
    sim_hard = None
    if latent is not None:
        if builder.config.long_source != "raw":
            raw_builder = BatchBuilder(dataset, SequenceConfig(long_len=L, short_len=builder.config.short_len,
                                                               long_source="raw"))
        if isinstance(model.long_term, SimHardLongTerm):
            sim_hard = model.long_term
        else:
            # Its ESU's random init must not move the caller's RNG (diagnostics run inside training).
            with torch.random.fork_rng(devices=[]):
                sim_hard = SimHardLongTerm(dataclasses.replace(model.config, long_term="sim_hard"), features)
    totals = dict.fromkeys(("kept", "kept_same", "long", "long_same", "recall_den", "rel", "bias", "match",
                            "logn", "virtual", "none"), 0.0)
    esu = {"mass": 0.0, "uniform": 0.0, "n": 0.0}
    beyond = {"n": 0.0, "kept": 0.0, "virtual": 0.0, "mass": 0.0, "mass_kept": 0.0}
    gt = {name: _Mean() for name in ("ndcg", "share", "dcg", "ndcg_sim", "share_sim", "dcg_sim", "ndcg_recent")}
    kept_age: list[np.ndarray] = []
    long_age: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(sub), batch_size):
        rows = np.arange(start, min(start + batch_size, len(sub)))
        b_np = None if buckets is None else buckets[rows].astype(np.int64)
        batch = builder.build(sub, rows).to(device)
        seq = batch.long
        target_code = codes[batch.target_item]  # [B]
        same = seq.mask & (codes[seq.item_id] == target_code[:, None]) & (target_code[:, None] != 0)  # [B, L]
        n_same = same.sum(dim=1)  # [B]
        totals["long"] += float(seq.mask.sum())
        totals["long_same"] += float(n_same.sum())
        totals["recall_den"] += float(n_same.clamp(max=k).sum())
        totals["none"] += float((n_same == 0).sum())
        age = seq.cross[..., -1] / _DAY  # time_gap is the last channel: [B, L]
        long_age.append(age[seq.mask].cpu().numpy())
        if latent is not None:
            raw = seq if raw_builder is builder else raw_builder.build(sub, rows).long.to(device)
            raw_gains = true_relevance(latent, batch.target_item, raw.item_id, raw.mask)  # [B, L]
            sim_index, sim_valid = _search_choice(sim_hard, features, batch.target_item, raw)
            ndcg, share, dcg = ndcg_at_k(raw_gains, sim_index, sim_valid)
            gt["ndcg_sim"].add(ndcg, b_np)
            gt["share_sim"].add(share, b_np)
            gt["dcg_sim"].add(dcg, b_np)
            K = min(k, raw.item_id.shape[1])
            recent = torch.arange(K, device=raw_gains.device).expand(len(rows), K)
            gt["ndcg_recent"].add(ndcg_at_k(raw_gains, recent, raw.mask[:, :K])[0], b_np)
        if kind is None:
            continue
        if kind == "search":
            if latent is not None:
                choice = _search_choice(model.long_term, features, batch.target_item, seq)
                gains = true_relevance(latent, batch.target_item, seq.item_id, seq.mask)
                for key, value in zip(("ndcg", "share", "dcg"), ndcg_at_k(gains, *choice), strict=True):
                    gt[key].add(value, b_np)
            continue
        query = features.inherent(batch.target_item)  # [B, D_h]
        trace = model.long_term.gsu_trace(features, query, batch.target_item, seq)
        kept = trace.valid  # [B, K]
        kept_same = same.gather(1, trace.index) & kept  # [B, K]
        n_kept = kept.sum(dim=1)  # [B]
        n_kept_same = kept_same.sum(dim=1)
        totals["kept"] += float(n_kept.sum())
        totals["kept_same"] += float(n_kept_same.sum())
        H = trace.relevance.shape[-1]
        pick = trace.index[..., None].expand(-1, -1, H)  # [B, K, H]
        weight = kept[..., None].float()
        totals["rel"] += float((trace.relevance.gather(1, pick).abs() * weight).sum()) / H
        totals["bias"] += float((trace.cross_bias.gather(1, pick).abs() * weight).sum()) / H
        totals["match"] += float((trace.match.gather(1, pick).abs() * weight).sum()) / H
        if model.long_term.use_log_size():
            totals["logn"] += float((seq.size.gather(1, trace.index).clamp_min(1.0).log() * kept).sum())
        virtual_same = None
        if seq.virtual is not None:
            kept_virtual = seq.virtual.gather(1, trace.index) & kept
            totals["virtual"] += float(kept_virtual.sum())
            virtual_same = kept_virtual & kept_same
        # The ESU's attention mass on the kept items of the target's category (mean over heads).
        w = trace.esu_weight.mean(dim=-1) * kept  # [B, K]
        mass = (w * kept_same).sum(dim=1)  # [B]
        has = n_kept_same > 0
        esu["mass"] += float(mass[has].sum())
        esu["uniform"] += float((n_kept_same[has] / n_kept[has]).sum())
        esu["n"] += float(has.sum())
        if b_np is not None:
            bl = torch.from_numpy(b_np == _BEYOND_L).to(has.device)
            beyond["n"] += float(bl.sum())
            beyond["kept"] += float((bl & has).sum())
            beyond["mass"] += float(mass[bl].sum())
            beyond["mass_kept"] += float(mass[bl & has].sum())
            if virtual_same is not None:
                beyond["virtual"] += float((bl & virtual_same.any(dim=1)).sum())
        if latent is not None:
            gains = true_relevance(latent, batch.target_item, seq.item_id, seq.mask)
            for key, value in zip(("ndcg", "share", "dcg"), ndcg_at_k(gains, trace.index, kept), strict=True):
                gt[key].add(value, b_np)
        kept_age.append(age.gather(1, trace.index)[kept].cpu().numpy())
    if was_training:
        model.train()

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    n = len(sub)
    out: dict[str, Any] = {
        "learned_gsu": learned, "gsu": kind, "num_samples": n, "esu_size": k, "long_len": L,
        "category": category,
        "category_share_in_long": ratio(totals["long_same"], totals["long"]),
        "same_category_in_long_mean": ratio(totals["long_same"], n),
        "share_without_same_category": ratio(totals["none"], n),
        "long_age_days_median": float(np.median(np.concatenate(long_age))) if long_age and n else float("nan"),
        "bucket_counts": None if buckets is None else {
            name: int((buckets == b).sum()) for b, name in enumerate(SAMPLE_BUCKETS)},
        "ground_truth": latent is not None,
        "gt_relevance": GT_RELEVANCE if latent is not None else None,
    }
    own = latent is not None and kind is not None
    out.update({
        "gt_ndcg": gt["ndcg"].mean() if own else None,
        "gt_gain_share": gt["share"].mean() if own else None,
        "gt_dcg": gt["dcg"].mean() if own else None,
        "gt_samples": int(gt["ndcg"].n[-1]) if own else None,
        "gt_ndcg_by_bucket": gt["ndcg"].by_bucket() if own and buckets is not None else None,
        "gt_ndcg_sim_hard": gt["ndcg_sim"].mean(),
        "gt_gain_share_sim_hard": gt["share_sim"].mean(),
        "gt_dcg_sim_hard": gt["dcg_sim"].mean(),
        "gt_ndcg_recent": gt["ndcg_recent"].mean(),
        "gt_samples_raw": int(gt["ndcg_sim"].n[-1]) if latent is not None else None,
        "gt_ndcg_sim_hard_by_bucket": gt["ndcg_sim"].by_bucket() if latent is not None and buckets is not None
        else None,
    })
    if learned:
        hit = ratio(totals["kept_same"], totals["kept"])
        has_beyond = buckets is not None and beyond["n"] > 0
        out.update({
            "category_hit_rate": hit,
            "retrieval_lift": ratio(hit, out["category_share_in_long"]),
            "category_recall": ratio(totals["kept_same"], totals["recall_den"]),
            "relevance_abs": ratio(totals["rel"], totals["kept"]),
            "cross_bias_abs": ratio(totals["bias"], totals["kept"]),
            "match_abs": ratio(totals["match"], totals["kept"]),
            "log_size_abs": ratio(totals["logn"], totals["kept"]),
            "virtual_share": ratio(totals["virtual"], totals["kept"]),
            "selected_age_days_median": float(np.median(np.concatenate(kept_age))) if kept_age else float("nan"),
            "esu_weight_same_category": ratio(esu["mass"], esu["n"]),
            "esu_weight_same_category_uniform": ratio(esu["uniform"], esu["n"]),
            "esu_weight_samples": int(esu["n"]),
            "beyond_L_samples": int(beyond["n"]) if buckets is not None else None,
            "beyond_L_same_category_kept_share": ratio(beyond["kept"], beyond["n"]) if has_beyond else None,
            "beyond_L_virtual_kept_share": (ratio(beyond["virtual"], beyond["n"])
                                            if has_beyond and builder.config.long_source == "compressed" else None),
            "beyond_L_esu_weight_same_category": ratio(beyond["mass"], beyond["n"]) if has_beyond else None,
            "beyond_L_esu_weight_when_kept": (ratio(beyond["mass_kept"], beyond["kept"])
                                              if has_beyond and beyond["kept"] > 0 else None),
        })
    return {key: (None if isinstance(v, float) and math.isnan(v) and key.startswith(("gt_", "beyond_")) else v)
            for key, v in out.items()}

"""Retrieval diagnostics of the two-stage models: is TWIN's GSU target-aware?

For a set of samples, compares what the GSU of ``twin`` / ``twinv2`` keeps with what a category filter
(``sim_hard``'s search) would keep, and breaks the selected scores into their terms:

- ``category_hit_rate``: share of the kept behaviors whose category equals the target's (precision);
- ``category_share_in_long``: that share over the whole GSU input L (what a random choice would get);
  ``retrieval_lift`` = hit rate / share in L;
- ``category_recall``: kept same-category behaviors / ``min(k, same-category behaviors in L)``, summed
  over samples; ``sim_hard`` recalls all of them by construction (recall 1, precision 1 where any exist);
- ``relevance_abs``, ``cross_bias_abs``, ``log_size_abs``: mean absolute size, over the kept behaviors
  and heads, of the target-aware term, the cross-feature bias and ``ln n`` (0 for twin);
- ``virtual_share``: share of virtual items (clusters) among the kept behaviors (twinv2);
- ``selected_age_days_median`` and ``long_age_days_median``: median age of the kept behaviors and of all
  of L, in days before the request.

Category = ``sim_hard``'s categorical (``ModelConfig.sim_category``, else ``category_id``, else the first
inherent categorical); unknown codes (0) match nothing, as in ``sim_hard``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from twinv2.data.batches import BatchBuilder
from twinv2.data.split import Samples
from twinv2.models import CTRModel
from twinv2.models.sim import resolve_sim_category

__all__ = ["has_learned_gsu", "retrieval_diagnostics"]

_DAY = 86_400.0


def has_learned_gsu(model: CTRModel) -> bool:
    """True for models whose GSU is TWIN's learned score (``twin``, ``twinv2``)."""
    return hasattr(model.long_term, "twin")


@torch.no_grad()
def retrieval_diagnostics(model: CTRModel, builder: BatchBuilder, samples: Samples, *, batch_size: int = 1024,
                          max_samples: int | None = 5000, device: torch.device | str = "cpu",
                          seed: int = 0) -> dict[str, Any]:
    """GSU diagnostics of ``model`` over (a seeded subsample of at most ``max_samples`` of) ``samples``.

    Returns a JSON-ready dict (keys in the module docstring, plus ``num_samples``, ``esu_size``,
    ``long_len``, ``category``, ``same_category_in_long_mean`` and ``share_without_same_category``).
    For a model without a learned GSU only the dataset-side keys (share in L, counts) are filled and
    ``learned_gsu`` is False.
    """
    index = np.arange(len(samples))
    if max_samples is not None and len(index) > max_samples:
        index = np.sort(np.random.default_rng(seed).choice(len(index), max_samples, replace=False))
    features = model.features
    codes = features.item_category(resolve_sim_category(model.config, features)).to(device)  # [N + 1]
    learned = has_learned_gsu(model)
    k = model.config.esu_size
    totals = dict.fromkeys(("kept", "kept_same", "long", "long_same", "recall_den", "rel", "bias", "logn",
                            "virtual", "none"), 0.0)
    kept_age: list[np.ndarray] = []
    long_age: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(index), batch_size):
        batch = builder.build(samples, index[start:start + batch_size]).to(device)
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
        if not learned:
            continue
        query = features.inherent(batch.target_item)  # [B, D_h]
        trace = model.long_term.twin.trace(features, query, seq, k, model.long_term.use_log_size())
        kept = trace.valid  # [B, K]
        kept_same = same.gather(1, trace.index) & kept
        totals["kept"] += float(kept.sum())
        totals["kept_same"] += float(kept_same.sum())
        H = trace.relevance.shape[-1]
        pick = trace.index[..., None].expand(-1, -1, H)  # [B, K, H]
        weight = kept[..., None].float()
        totals["rel"] += float((trace.relevance.gather(1, pick).abs() * weight).sum()) / H
        totals["bias"] += float((trace.cross_bias.gather(1, pick).abs() * weight).sum()) / H
        if model.long_term.use_log_size():
            totals["logn"] += float((seq.size.gather(1, trace.index).clamp_min(1.0).log() * kept).sum())
        if seq.virtual is not None:
            totals["virtual"] += float((seq.virtual.gather(1, trace.index) & kept).sum())
        kept_age.append(age.gather(1, trace.index)[kept].cpu().numpy())
    if was_training:
        model.train()

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    n = len(index)
    out: dict[str, Any] = {
        "learned_gsu": learned, "num_samples": n, "esu_size": k, "long_len": builder.config.long_len,
        "category": resolve_sim_category(model.config, features),
        "category_share_in_long": ratio(totals["long_same"], totals["long"]),
        "same_category_in_long_mean": ratio(totals["long_same"], n),
        "share_without_same_category": ratio(totals["none"], n),
        "long_age_days_median": float(np.median(np.concatenate(long_age))) if long_age and n else float("nan"),
    }
    if learned:
        hit = ratio(totals["kept_same"], totals["kept"])
        out.update({
            "category_hit_rate": hit,
            "retrieval_lift": ratio(hit, out["category_share_in_long"]),
            "category_recall": ratio(totals["kept_same"], totals["recall_den"]),
            "relevance_abs": ratio(totals["rel"], totals["kept"]),
            "cross_bias_abs": ratio(totals["bias"], totals["kept"]),
            "log_size_abs": ratio(totals["logn"], totals["kept"]),
            "virtual_share": ratio(totals["virtual"], totals["kept"]),
            "selected_age_days_median": float(np.median(np.concatenate(kept_age))) if kept_age else float("nan"),
        })
    return out

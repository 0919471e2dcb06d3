"""Retrieval diagnostics: the GSU trace is the forward's choice, and the shares mean what they say."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twinv2.data.batches import BatchBuilder, SequenceConfig
from twinv2.data.split import TemporalSplit, make_samples
from twinv2.data.store import load_dataset
from twinv2.models import build_model
from twinv2.models.attention import cluster_aware_scores, topk_merge
from twinv2.train.diagnostics import has_learned_gsu, retrieval_diagnostics

from ..models.model_testing import tiny_config


@pytest.fixture(scope="module")
def dataset(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir)


def _setup(dataset, long_term="twin", long_len=20, **overrides):
    torch.manual_seed(0)
    model = build_model(tiny_config(long_term, **overrides), dataset.manifest, dataset.items).eval()
    split = TemporalSplit.from_fractions(dataset.histories.ts, snapshot=0.3, valid=0.6, test=0.8)
    samples = make_samples(dataset, split, "train", max_samples=150, seed=0)
    builder = BatchBuilder(dataset, SequenceConfig(long_len=long_len, short_len=6))
    return model, builder, samples


def _reference(model, builder, samples, k):
    """Hit rate and recall recomputed from the model's own scores, sample by sample."""
    batch = builder.build(samples)
    seq = batch.long
    f = model.features
    codes = f.item_category("category_id")
    query = f.inherent(batch.target_item)
    twin = model.long_term.twin
    with torch.no_grad():
        kernel = twin.score.query_kernel(query)
        table = f.cross_projection_table(twin.score.cross_weights())
        alpha = twin.scores(f, kernel, table, seq.item_id, f.cross_rows(seq.cross))
        index, valid = topk_merge(cluster_aware_scores(alpha, seq.size, seq.mask, False), seq.mask, k)
    kept = kept_same = recall_den = 0
    for b in range(len(samples)):
        target = int(codes[batch.target_item[b]])
        same = [bool(seq.mask[b, i]) and int(codes[seq.item_id[b, i]]) == target and target != 0
                for i in range(seq.item_id.shape[1])]
        chosen = [int(i) for i, v in zip(index[b], valid[b], strict=True) if v]
        kept += len(chosen)
        kept_same += sum(same[i] for i in chosen)
        recall_den += min(k, sum(same))
    return kept_same / kept, kept_same / recall_den


def test_retrieval_diagnostics_match_a_per_sample_recount(dataset):
    model, builder, samples = _setup(dataset)
    diag = retrieval_diagnostics(model, builder, samples, batch_size=32, max_samples=None)
    hit, recall = _reference(model, builder, samples, model.config.esu_size)
    assert diag["learned_gsu"] and diag["num_samples"] == len(samples)
    assert diag["category_hit_rate"] == pytest.approx(hit)
    assert diag["category_recall"] == pytest.approx(recall)
    assert diag["retrieval_lift"] == pytest.approx(hit / diag["category_share_in_long"])
    assert diag["relevance_abs"] > 0 and diag["cross_bias_abs"] > 0
    assert diag["log_size_abs"] == 0.0  # twin: no ln n term
    assert diag["virtual_share"] is not None and (math.isnan(diag["virtual_share"]) or diag["virtual_share"] == 0)


def test_retrieval_diagnostics_keep_everything_when_k_covers_l(dataset):
    """With k >= L the GSU keeps every behavior: recall 1 and hit rate = the share over L."""
    model, builder, samples = _setup(dataset, long_len=5, esu_size=5)
    diag = retrieval_diagnostics(model, builder, samples, max_samples=None)
    assert diag["category_recall"] == pytest.approx(1.0)
    assert diag["category_hit_rate"] == pytest.approx(diag["category_share_in_long"])


def test_retrieval_diagnostics_see_a_category_aware_score(dataset):
    """A score that only rewards the category match recalls every same-category behavior (up to k)."""
    model, builder, samples = _setup(dataset, feature_dim=8, head_dim=8)  # one dimension per category code
    twin = model.long_term.twin
    f = model.features
    with torch.no_grad():
        # Orthogonal category embeddings, nothing else in the key: relevance = c * [same category].
        f.id_embedding.weight.zero_()
        f.item_feature_embedding.weight.zero_()
        offset = f._side_offsets["category_id"]
        col = f.categorical_names.index("category_id")
        for code in range(1, 8):
            f.item_feature_embedding.weight[offset + code, code] = 1.0
        start = f.id_dim + col * f.feature_dim
        twin.score.key_weight.zero_()
        twin.score.query_weight.zero_()
        for h in range(twin.score.num_heads):
            for d in range(min(f.feature_dim, twin.score.head_dim)):
                twin.score.key_weight[h, start + d, d] = 10.0
                twin.score.query_weight[h, start + d, d] = 10.0
        twin.score.cross_beta.zero_()
    diag = retrieval_diagnostics(model, builder, samples, max_samples=None)
    assert diag["category_recall"] == pytest.approx(1.0)
    assert diag["category_hit_rate"] > 2 * diag["category_share_in_long"]


def test_retrieval_diagnostics_of_a_model_without_learned_gsu_report_the_data_side_only(dataset):
    model, builder, samples = _setup(dataset, long_term="sim_hard")
    assert not has_learned_gsu(model)
    diag = retrieval_diagnostics(model, builder, samples, max_samples=50, seed=3)
    assert not diag["learned_gsu"] and diag["num_samples"] == 50
    assert "category_hit_rate" not in diag
    assert 0.0 <= diag["category_share_in_long"] <= 1.0
    assert np.isfinite(diag["same_category_in_long_mean"])

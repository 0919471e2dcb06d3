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
        kernel = twin.score.query_kernel(twin.score_query(f, query, batch.target_item))
        table = f.cross_projection_table(twin.score.cross_weights())
        alpha = twin.scores(f, kernel, table, seq.item_id, f.cross_rows(seq.cross),
                            twin.target_codes(f, batch.target_item))
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


# -- ground-truth retrieval quality and the ESU / beyond-L diagnostics ----------------------------------


def test_ndcg_at_k_hand_computed():
    from twinv2.train.diagnostics import ndcg_at_k

    gains = torch.tensor([[0.0, 1.0, 0.5, 0.2], [0.0, 1.0, 0.5, 0.2], [0.0, 1.0, 0.5, 0.2], [0.0, 0.0, 0.0, 0.0]])
    index = torch.tensor([[1, 2], [2, 3], [1, 0], [0, 1]])
    valid = torch.tensor([[True, True], [True, True], [True, False], [True, True]])
    ndcg, share, dcg = ndcg_at_k(gains, index, valid)
    ideal = 1.0 + 0.5 / math.log2(3)  # the two best gains, 1 and 0.5, in that order
    assert ndcg[0].item() == pytest.approx(1.0) and share[0].item() == pytest.approx(1.0)  # perfect retrieval
    assert dcg[0].item() == pytest.approx(ideal)
    assert ndcg[1].item() == pytest.approx((0.5 + 0.2 / math.log2(3)) / ideal)
    assert share[1].item() == pytest.approx(0.7 / 1.5)
    assert ndcg[2].item() == pytest.approx(1.0 / ideal)  # the padding slot counts 0
    assert math.isnan(ndcg[3].item()) and math.isnan(share[3].item())  # no positive gain: undefined
    # The same set in the other order: a lower NDCG, the same order-free share.
    swapped, swapped_share, _ = ndcg_at_k(gains[:1], torch.tensor([[2, 1]]), valid[:1])
    assert swapped.item() == pytest.approx((0.5 + 1.0 / math.log2(3)) / ideal) and swapped_share.item() == 1.0


def test_true_relevance_is_the_clipped_cosine():
    from twinv2.train.diagnostics import true_relevance

    latent = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])
    got = true_relevance(latent, torch.tensor([1]), torch.tensor([[1, 2, 3, 4, 0]]),
                         torch.tensor([[True, True, True, True, False]]))
    assert got.tolist()[0] == pytest.approx([1.0, 0.0, 0.0, 1 / math.sqrt(2), 0.0])


@pytest.fixture(scope="module")
def gt_dataset(tiny_dataset_dir, tmp_path_factory):
    """The tiny dataset with a ground truth: each item's true vector is the one-hot of its category, so the
    true relevance is 1 for a behavior of the target's category and 0 otherwise."""
    import shutil

    out = tmp_path_factory.mktemp("gt") / "ds"
    shutil.copytree(tiny_dataset_dir, out)
    category = load_dataset(out).items["category_id"].astype(np.int64)  # [I + 1]
    latent = np.zeros((len(category), int(category.max()) + 1), np.float32)
    latent[np.arange(1, len(category)), category[1:]] = 1.0
    (out / "ground_truth").mkdir()
    np.save(out / "ground_truth" / "item_latent.npy", latent)
    return load_dataset(out)


def test_ground_truth_ndcg_of_a_category_filter_is_one_when_relevance_is_the_category(gt_dataset):
    """sim_hard keeps the most recent same-category behaviors: with category one-hot truth, a perfect set."""
    model, builder, samples = _setup(gt_dataset, long_term="sim_hard")
    diag = retrieval_diagnostics(model, builder, samples, max_samples=None)
    assert diag["ground_truth"] and diag["gsu"] == "search" and "max(0, cos" in diag["gt_relevance"]
    assert diag["gt_ndcg"] == pytest.approx(1.0) and diag["gt_gain_share"] == pytest.approx(1.0)
    assert diag["gt_ndcg_sim_hard"] == pytest.approx(1.0) and diag["gt_gain_share_sim_hard"] == pytest.approx(1.0)
    assert diag["gt_dcg"] == pytest.approx(diag["gt_dcg_sim_hard"])
    assert 0.0 <= diag["gt_ndcg_recent"] <= 1.0 and diag["gt_samples"] == diag["gt_samples_raw"] > 0
    assert set(diag["gt_ndcg_sim_hard_by_bucket"]) == {"within_50", "within_L", "beyond_L", "never"}

    twin, builder, samples = _setup(gt_dataset, long_term="twin")
    d = retrieval_diagnostics(twin, builder, samples, max_samples=None)
    assert d["gsu"] == "learned" and 0.0 < d["gt_ndcg"] <= 1.0 + 1e-9
    assert d["gt_ndcg_sim_hard"] == pytest.approx(1.0)  # the same samples and L: the reference is the same
    assert d["gt_dcg"] <= diag["gt_dcg_sim_hard"] + 1e-6
    # With k >= L the GSU keeps everything: the whole gain, whatever the order.
    everything, builder, samples = _setup(gt_dataset, long_term="twin", long_len=5, esu_size=5)
    assert retrieval_diagnostics(everything, builder, samples, max_samples=None)["gt_gain_share"] == pytest.approx(1.0)


def test_ground_truth_keys_are_none_without_ground_truth(dataset):
    model, builder, samples = _setup(dataset, long_term="twin")
    diag = retrieval_diagnostics(model, builder, samples, max_samples=40)
    assert diag["ground_truth"] is False and diag["gt_relevance"] is None
    assert all(diag[k] is None for k in diag if k.startswith("gt_"))
    din, builder, samples = _setup(dataset, long_term="din")
    assert retrieval_diagnostics(din, builder, samples, max_samples=40)["gsu"] is None


def _assert_learned_keys(diag):
    for key in ("category_recall", "category_hit_rate", "match_abs", "esu_weight_same_category",
                "esu_weight_same_category_uniform", "esu_weight_samples", "beyond_L_samples",
                "beyond_L_same_category_kept_share", "beyond_L_virtual_kept_share",
                "beyond_L_esu_weight_same_category", "beyond_L_esu_weight_when_kept", "gt_ndcg", "gt_ndcg_by_bucket"):
        assert key in diag, key
    assert sum(diag["bucket_counts"].values()) == diag["num_samples"]
    assert diag["beyond_L_samples"] == diag["bucket_counts"]["beyond_L"] > 0
    assert 0.0 <= diag["esu_weight_same_category"] <= 1.0 + 1e-6
    assert 0.0 < diag["esu_weight_same_category_uniform"] <= 1.0
    assert diag["match_abs"] > 0  # relevance: match is the default
    assert 0.0 <= diag["gt_ndcg"] <= 1.0 + 1e-9


def test_diagnostics_of_tiny_trained_twin_and_twinv2(gt_dataset, tmp_path, quiet):
    """Every key on trained models; for the beyond-L samples a raw-L model can keep no item of the target's
    category (there is none in its L), and whatever twinv2 keeps of it there is a virtual item."""
    from tests.train.conftest import tiny_config as train_config
    from twinv2.compress import compress_dataset
    from twinv2.train.evaluate import evaluate_checkpoint
    from twinv2.train.loop import make_split, train_model

    cfg = {"data__long_len": 6, "data__raw_cap": 2, "model__esu_size": 3, "train__max_steps": 4}
    split = make_split(gt_dataset, train_config(**cfg))
    clusters = tmp_path / "clusters"
    compress_dataset(gt_dataset.path, clusters, split.snapshot_ts, workers=1, progress=False)
    for name in ("twin", "twinv2"):
        result = train_model(gt_dataset, tmp_path / name, train_config(model__long_term=name, **cfg),
                             compressed=clusters if name == "twinv2" else None, show_progress=False, console=quiet)
        report = evaluate_checkpoint(result.best_checkpoint, "test", dataset=gt_dataset, diagnostics=True,
                                     show_progress=False)
        assert set(report["buckets"]) == {"within_50", "within_L", "beyond_L", "never"}
        diag = report["diagnostics"]
        _assert_learned_keys(diag)
        if name == "twin":
            assert diag["beyond_L_same_category_kept_share"] == 0.0 and diag["beyond_L_virtual_kept_share"] is None
            assert diag["beyond_L_esu_weight_same_category"] == 0.0
        else:
            assert diag["virtual_share"] > 0
            assert diag["beyond_L_virtual_kept_share"] == pytest.approx(diag["beyond_L_same_category_kept_share"])

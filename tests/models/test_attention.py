"""Attention primitives against their slow pure-Python references, and the invariants of the method."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.models.model_testing import random_sequence, tiny_config
from twinv2.data.batches import SequenceBatch
from twinv2.models.attention import (
    MultiHeadTargetAttention,
    TwinAttention,
    cluster_aware_scores,
    masked_softmax,
    reference_esu,
    reference_match,
    reference_topk_merge,
    reference_twin_scores,
    topk_merge,
)
from twinv2.models.embeddings import FeatureEmbeddings


@st.composite
def scored_sequences(draw):
    """Random ``alpha [B, L, H]`` (distinct values, so rankings are unambiguous), a mask, and k."""
    B, L, H = draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    alpha = torch.from_numpy(rng.permutation(B * L * H).reshape(B, L, H).astype(np.float32))
    # Padding anywhere (not only at the end): the merge must rely on the mask alone.
    mask = torch.from_numpy(rng.uniform(size=(B, L)) < draw(st.floats(0.0, 1.0)))
    # Some heads agree exactly (worst case for the merge: one new item per round).
    if draw(st.booleans()):
        alpha[..., :] = alpha[..., :1]
    return alpha, mask, draw(st.integers(1, 15))


@settings(max_examples=150, deadline=None)
@given(scored_sequences())
def test_topk_merge_equals_reference(case):
    alpha, mask, k = case
    index, valid = topk_merge(alpha, mask, k)
    ref_index, ref_valid = reference_topk_merge(alpha.tolist(), mask.tolist(), k)
    assert valid.tolist() == ref_valid
    # Padding positions tie at -inf, so their order is arbitrary; the real ones must match exactly.
    for row, ref_row, row_valid in zip(index.tolist(), ref_index, ref_valid, strict=True):
        assert [p for p, v in zip(row, row_valid, strict=True) if v] == [
            p for p, v in zip(ref_row, row_valid, strict=True) if v]


@settings(max_examples=150, deadline=None)
@given(scored_sequences())
def test_topk_merge_never_puts_padding_ahead_of_real(case):
    alpha, mask, k = case
    B, L, _ = alpha.shape
    index, valid = topk_merge(alpha, mask, k)
    assert index.shape == valid.shape == (B, min(k, L))
    for b in range(B):
        row = index[b].tolist()
        assert len(set(row)) == len(row)  # unique behaviors
        real = int(mask[b].sum())
        assert valid[b].tolist() == [True] * min(real, len(row)) + [False] * (len(row) - min(real, len(row)))
        assert torch.equal(valid[b], mask[b, index[b]])


def test_topk_merge_round_robin_order():
    # Head 0 ranks 0 > 1 > 2 > 3, head 1 ranks 3 > 0 > 2 > 1: walk 0, 3, (1), (0 dup), 1 ... -> [0, 3, 1].
    alpha = torch.tensor([[[4.0, 3.0], [3.0, 1.0], [2.0, 2.0], [1.0, 4.0]]])
    index, valid = topk_merge(alpha, torch.ones(1, 4, dtype=torch.bool), 3)
    assert index.tolist() == [[0, 3, 1]] and valid.all()


def test_masked_softmax_all_padding_gives_zeros_and_rows_sum_to_one():
    scores = torch.randn(3, 5, 2)
    mask = torch.tensor([[True] * 5, [True, False, True, False, False], [False] * 5])
    p = masked_softmax(scores, mask)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p[:2].sum(dim=1), torch.ones(2, 2))
    assert (p[1, ~mask[1]] == 0).all() and (p[2] == 0).all()


def test_cluster_aware_softmax_equals_expanded_members():
    """softmax(alpha + ln n) over clusters == softmax over the members, each with its cluster's score and
    values; so the ESU output over virtual items equals the ESU over the expanded raw behaviors."""
    torch.manual_seed(0)
    B, C, H, D = 2, 5, 3, 6
    alpha = torch.randn(B, C, H)
    values = torch.randn(B, C, D)
    sizes = torch.tensor([[1.0, 4, 2, 7, 3], [2.0, 1, 1, 5, 0]])
    mask = sizes > 0
    clustered = masked_softmax(cluster_aware_scores(alpha, sizes, mask, True), mask)
    attention = MultiHeadTargetAttention(D, H, 4)
    out_clusters = attention(cluster_aware_scores(alpha, sizes, mask, True), values, mask)
    for b in range(B):
        members = torch.repeat_interleave(torch.arange(C), sizes[b].long())  # member -> its cluster
        expanded = masked_softmax(alpha[b, members][None], torch.ones(1, len(members), dtype=torch.bool))[0]
        per_cluster = torch.zeros(C, H).index_add_(0, members, expanded)
        torch.testing.assert_close(clustered[b], per_cluster)
        ones = torch.ones(1, len(members), dtype=torch.bool)
        out_members = attention(alpha[b, members][None], values[b, members][None], ones)
        torch.testing.assert_close(out_clusters[b], out_members[0])


def _twin_setup(model_dataset, k, L=12, max_size=1, seed=0, **options):
    """A TwinAttention (options: match_features, match_init, attention_dim), 4 sequences and targets."""
    config = tiny_config(esu_size=k)
    torch.manual_seed(seed)
    features = FeatureEmbeddings(config, model_dataset.manifest, model_dataset.items)
    twin = TwinAttention(features, config.num_heads, config.head_dim, **options)
    rng = np.random.default_rng(seed)
    seq = random_sequence(model_dataset, 4, L, rng, lengths=[L, 7, 2, 0], max_size=max_size)
    target = torch.from_numpy(rng.integers(1, model_dataset.manifest.num_items + 1, 4))
    if twin.match is not None:  # make matches common: two behaviors per row share the target's item
        seq.item_id[:2, :2] = target[:2, None]
    return features, twin, seq, features.inherent(target), target


def _reference_twin(features, twin, seq: SequenceBatch, query, target, k, use_log_size):
    """GSU and ESU for each sample by the slow references (plain Python lists and loops)."""
    s = twin.score
    weights = dict(key_weight=s.key_weight.tolist(), query_weight=s.query_weight.tolist(),
                   cross_weight=s.cross_weight.tolist(), cross_beta=s.cross_beta.tolist())
    rows = features.cross_rows(seq.cross)
    outputs = []
    for b in range(seq.item_id.shape[0]):
        values_h = features.inherent(seq.item_id[b]).tolist()
        keys, q = values_h, query[b].tolist()
        if twin.keys is not None:  # DARE: the score reads its own tables
            keys = torch.cat(twin.keys.blocks(features, seq.item_id[b]), dim=-1).tolist()
            q = torch.cat(twin.keys.blocks(features, target[b]), dim=-1).tolist()
        cross = features.cross_embedding(rows[b]).tolist()  # [L][J][F]
        alpha = reference_twin_scores(keys, cross, q, **weights)
        if twin.match is not None:
            match = reference_match(twin.match.codes(features, target[b]).tolist(),
                                    twin.match.codes(features, seq.item_id[b]).tolist(),
                                    twin.match.unknown_rows.tolist(), twin.match.weight.tolist())
            alpha = [[x + m for x, m in zip(row, mrow, strict=True)] for row, mrow in zip(alpha, match, strict=True)]
        sizes, mask = seq.size[b].tolist(), seq.mask[b].tolist()
        ranked = [[a + (math.log(max(sizes[i], 1.0)) if use_log_size else 0.0) for a in alpha[i]]
                  for i in range(len(alpha))]
        (chosen,), _ = reference_topk_merge([ranked], [mask], k)
        values = [values_h[i] + [x for channel in cross[i] for x in channel] for i in chosen]
        outputs.append(reference_esu([alpha[i] for i in chosen], values, [mask[i] for i in chosen],
                                     [sizes[i] for i in chosen], use_log_size,
                                     twin.attention.value_weight.tolist(), twin.attention.out.weight.tolist()))
    return torch.tensor(outputs)


_OPTIONS = {
    "paper": {},
    "match": {"match_features": ("category_id", "author_id"), "match_init": 2.0},
    "dare": {"attention_dim": 6},
    "dare+match": {"attention_dim": 6, "match_features": ("category_id",), "match_init": 3.0},
}


@pytest.mark.parametrize("options", list(_OPTIONS))
@pytest.mark.parametrize(("k", "use_log_size", "max_size"), [(4, False, 1), (4, True, 9), (20, True, 9)])
def test_twin_attention_equals_slow_reference(model_dataset, k, use_log_size, max_size, options):
    features, twin, seq, query, target = _twin_setup(model_dataset, k, max_size=max_size, **_OPTIONS[options])
    with torch.no_grad():
        fast = twin(features, query, target, seq, k, use_log_size)
        slow = _reference_twin(features, twin, seq, query, target, k, use_log_size)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    assert (fast[3] == 0).all()  # the all-padding row


def test_match_term_never_matches_unknown_code(model_dataset):
    """Code 0 (unknown) on both sides is no match; a known shared value adds gamma to every head."""
    features, twin, seq, _, target = _twin_setup(model_dataset, 4, **_OPTIONS["match"])
    codes = twin.match.codes(features, seq.item_id)  # [B, L, F]
    target_codes = twin.match.codes(features, target)
    unknown = twin.match.unknown_rows
    target_codes[0] = unknown  # the target's values unknown
    codes[0] = unknown
    codes[1, 0] = target_codes[1]  # position 0 of row 1 shares every value with its target
    match = twin.match(target_codes, codes)
    assert (match[0] == 0).all()
    known = target_codes[1] != unknown
    torch.testing.assert_close(match[1, 0], (twin.match.weight * known[:, None]).sum(dim=0))


@pytest.mark.parametrize("options", list(_OPTIONS))
def test_twin_gsu_and_esu_share_parameters(model_dataset, options):
    """Consistency: the ESU's scores of the chosen behaviors are the GSU's scores at those positions."""
    features, twin, seq, query, target = _twin_setup(model_dataset, k=4, **_OPTIONS[options])
    kernel = twin.score.query_kernel(twin.score_query(features, query, target))
    table = features.cross_projection_table(twin.score.cross_weights())
    rows = features.cross_rows(seq.cross)
    codes = twin.target_codes(features, target)
    full = twin.scores(features, kernel, table, seq.item_id, rows, codes)  # [B, L, H]
    index, _ = topk_merge(cluster_aware_scores(full, seq.size, seq.mask, False), seq.mask, 4)
    picked_rows = rows.gather(1, index[..., None].expand(-1, -1, rows.shape[-1]))
    again = twin.scores(features, kernel, table, seq.item_id.gather(1, index), picked_rows, codes)
    torch.testing.assert_close(again, full.gather(1, index[..., None].expand(-1, -1, full.shape[-1])))
    trace = twin.trace(features, query, target, seq, 4, False)
    assert torch.equal(trace.index, index)
    torch.testing.assert_close(trace.relevance + trace.cross_bias + trace.match, full)
    real = trace.valid.any(dim=1)
    torch.testing.assert_close(trace.esu_weight.sum(dim=1)[real], torch.ones(int(real.sum()), full.shape[-1]))


@pytest.mark.parametrize("options", ["paper", "dare+match"])
def test_twin_attention_has_no_gradient_through_the_choice(model_dataset, options):
    """Only the k chosen behaviors' embeddings get gradient (hard top-k); the GSU keeps no graph."""
    features, twin, seq, query, target = _twin_setup(model_dataset, k=4, **_OPTIONS[options])
    twin(features, query.detach(), target, seq, 4, False).sum().backward()
    kernel = twin.score.query_kernel(twin.score_query(features, query, target))
    table = features.cross_projection_table(twin.score.cross_weights())
    alpha = twin.scores(features, kernel, table, seq.item_id, features.cross_rows(seq.cross),
                        twin.target_codes(features, target))
    index, valid = topk_merge(alpha, seq.mask, 4)
    chosen = set(seq.item_id.gather(1, index)[valid].tolist())
    tables = [features.id_embedding.weight] + ([] if twin.keys is None else [twin.keys.id_embedding.weight])
    for table in tables:
        touched = set(torch.nonzero(table.grad.abs().sum(1)).flatten().tolist())
        assert touched <= chosen | set(target.tolist())
        assert touched >= chosen - {0}


# ---- issue 9: TargetAttention and DIN's activation unit against slow references --------------------------


def _reference_mlp(mlp, x: list[float]) -> list[float]:
    """The MLP written out: Linear (y_o = b_o + sum_i W_oi x_i), PReLU with one slope per feature, ..."""
    for layer in mlp.net:
        if isinstance(layer, torch.nn.Linear):
            W, b = layer.weight.tolist(), layer.bias.tolist()
            x = [b[o] + sum(W[o][i] * x[i] for i in range(len(x))) for o in range(len(W))]
        else:  # FeaturePReLU
            slopes = layer.weight.tolist()
            x = [v if v >= 0 else slopes[o] * v for o, v in enumerate(x)]
    return x


def test_target_attention_equals_slow_reference(model_dataset):
    from twinv2.models.attention import TargetAttention

    config = tiny_config()
    torch.manual_seed(3)
    features = FeatureEmbeddings(config, model_dataset.manifest, model_dataset.items)
    attention = TargetAttention(features, config.num_heads, config.head_dim)
    rng = np.random.default_rng(3)
    seq = random_sequence(model_dataset, 4, 9, rng, lengths=[9, 5, 1, 0])
    query = features.inherent(torch.from_numpy(rng.integers(1, model_dataset.manifest.num_items + 1, 4)))
    with torch.no_grad():
        fast = attention(features, query, seq)
        full = features.full(seq.item_id, features.cross_rows(seq.cross))  # [B, K, D]: keys and values
        s, H = attention.score, config.num_heads
        slow = []
        for b in range(4):
            keys = full[b].tolist()
            # Classic target attention: no cross bias (no channels), the full features as keys and values.
            alpha = reference_twin_scores(keys, [[] for _ in keys], query[b].tolist(), s.key_weight.tolist(),
                                          s.query_weight.tolist(), [[] for _ in range(H)], [[] for _ in range(H)])
            slow.append(reference_esu(alpha, keys, seq.mask[b].tolist(), [1.0] * len(keys), False,
                                      attention.attention.value_weight.tolist(),
                                      attention.attention.out.weight.tolist()))
    torch.testing.assert_close(fast, torch.tensor(slow), rtol=1e-4, atol=1e-5)
    assert (fast[3] == 0).all()  # the all-padding row
    assert not torch.allclose(fast[0], fast[1])  # the rows differ: the check compares something


def test_din_activation_unit_equals_slow_reference(model_dataset):
    """DIN: w_i = MLP([e_i, q, e_i - q, e_i * q, c_i]) per behavior, NOT softmax-normalised; the output is
    sum_i w_i [e_i, c_i] over the first din_len real behaviors."""
    from twinv2.models.din import DinLongTerm

    config = tiny_config(long_term="din")
    torch.manual_seed(4)
    features = FeatureEmbeddings(config, model_dataset.manifest, model_dataset.items)
    din = DinLongTerm(config, features)
    with torch.no_grad():  # distinct slopes per feature, so a slope applied on the wrong axis shows
        for layer in din.activation_unit.net:
            if not isinstance(layer, torch.nn.Linear):
                layer.weight.copy_(torch.rand(layer.weight.shape) * 0.5)
    rng = np.random.default_rng(4)
    L = config.din_len + 3  # behaviors past din_len must be ignored
    seq = random_sequence(model_dataset, 3, L, rng, lengths=[L, 4, 0])
    target = torch.from_numpy(rng.integers(1, model_dataset.manifest.num_items + 1, 3))
    query = features.inherent(target)
    with torch.no_grad():
        fast = din(features, query, target, seq)
        e_all = features.inherent(seq.item_id)
        c_all = features.cross(features.cross_rows(seq.cross))
        slow = []
        for b in range(3):
            q = query[b].tolist()
            out = [0.0] * (len(q) + c_all.shape[-1])
            for i in range(config.din_len):
                if not seq.mask[b, i]:
                    continue
                e, c = e_all[b, i].tolist(), c_all[b, i].tolist()
                x = e + q + [u - v for u, v in zip(e, q, strict=True)] + [u * v for u, v in zip(e, q, strict=True)] + c
                (w,) = _reference_mlp(din.activation_unit, x)
                out = [o + w * v for o, v in zip(out, e + c, strict=True)]
            slow.append(out)
    torch.testing.assert_close(fast, torch.tensor(slow), rtol=1e-4, atol=1e-5)
    assert (fast[2] == 0).all()


def test_esu_evidence_is_the_logsumexp_of_alpha_over_real_items():
    """The evidence features follow the pooled heads: logsumexp over the real items, 0 for an empty row."""
    torch.manual_seed(0)
    attention = MultiHeadTargetAttention(value_dim=6, num_heads=3, head_dim=4, evidence=True)
    plain = MultiHeadTargetAttention(value_dim=6, num_heads=3, head_dim=4)
    plain.load_state_dict(attention.state_dict())
    alpha, values = torch.randn(3, 5, 3), torch.randn(3, 5, 6)
    mask = torch.tensor([[True] * 5, [True, False, True, False, False], [False] * 5])
    out = attention(alpha, values, mask)
    assert out.shape == (3, attention.out_dim) and attention.out_dim == 12 + 3
    torch.testing.assert_close(out[:, :12], plain(alpha, values, mask))
    torch.testing.assert_close(out[0, 12:], torch.logsumexp(alpha[0], dim=0))
    torch.testing.assert_close(out[1, 12:], torch.logsumexp(alpha[1, [0, 2]], dim=0))
    assert bool((out[2] == 0).all())

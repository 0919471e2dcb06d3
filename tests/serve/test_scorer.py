"""The serving scorer equals the training forward, for twin and twinv2, on the same users and times."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.serve.serve_testing import ESU_SIZE, SNAPSHOT_TS, heavy_users, save_model
from twinv2.checkpoints import load_model
from twinv2.compress import load_compressed
from twinv2.data.batches import BatchBuilder
from twinv2.data.split import Samples
from twinv2.data.store import load_dataset
from twinv2.serve.loader import bootstrap_raw, load_version
from twinv2.serve.scorer import ProjectionCache, Scorer
from twinv2.serve.sequences import user_sequences
from twinv2.serve.sqlite_store import SqliteStore
from twinv2.serve.store import context_length


def _training_logits(model, info, dataset, compressed, user, ts, candidates):
    builder = BatchBuilder(dataset, info.sequence_config, compressed)
    B = len(candidates)
    samples = Samples(user_id=np.full(B, user, np.int64), ts=np.full(B, ts, np.int64), item_id=candidates,
                      label=np.zeros(B, np.int8), event_row=np.zeros(B, np.int64))
    with torch.no_grad():
        return model(builder.build(samples))


@pytest.fixture(scope="module", params=["twinv2", "twin"])
def served(request, serve_data, tmp_path_factory):
    long_term = request.param
    model, info = load_model(serve_data[long_term])
    store = SqliteStore(tmp_path_factory.mktemp("store") / "s.db", [c.name for c in info.manifest.cross_numerics],
                        context_length(info.sequence_config))
    # Both load the compressed version (a twin store keeps L raw behaviors before the snapshot), so every
    # request time from the snapshot on has its whole input in the store.
    load_version(store, serve_data["compressed"])
    compressed = load_compressed(serve_data["compressed"]) if long_term == "twinv2" else None
    return model, info, store, load_dataset(serve_data["dataset"]), compressed


@pytest.mark.parametrize("ts", [SNAPSHOT_TS, 7_777, 10_000])
def test_scorer_matches_training_forward(served, ts):
    model, info, store, dataset, compressed = served
    scorer = Scorer(model, chunk=7, esu_chunk=11)  # chunk sizes that do not divide B
    candidates = np.arange(1, dataset.manifest.num_items + 1, dtype=np.int64)
    for user in heavy_users(dataset):
        expected = _training_logits(model, info, dataset, compressed, int(user), ts, candidates)
        seqs = user_sequences(store.get_user(int(user)), ts, info.manifest, info.sequence_config)
        assert int(seqs.long.mask.sum()) > ESU_SIZE  # the GSU really selects
        got, _ = scorer.score(seqs.long, seqs.short, torch.from_numpy(candidates))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        naive = scorer.score_forward(seqs.long, seqs.short, torch.from_numpy(candidates), chunk=13)
        torch.testing.assert_close(naive, expected, rtol=0, atol=1e-5)


def test_scorer_cold_start_user_scores_without_long_term_input(served):
    model, info, store, _, _ = served
    state = store.get_user(10_000)  # never seen
    assert not state.known and not len(state.events) and state.num_clusters == 0
    seqs = user_sequences(state, 9_000, info.manifest, info.sequence_config)
    assert not bool(seqs.long.mask.any())
    cands = torch.arange(1, 11)
    got, expl = Scorer(model).score(seqs.long, seqs.short, cands, explain=3)
    torch.testing.assert_close(got, Scorer(model).score_forward(seqs.long, seqs.short, cands), rtol=0, atol=1e-5)
    assert expl is not None and bool((expl.positions == -1).all())


def test_projection_cache_holds_every_item_projection(served):
    model, *_ = served
    cache = ProjectionCache(model)
    twin = model.long_term.twin
    ids = torch.tensor([0, 1, 5, model.features.num_items])
    with torch.no_grad():
        expected = twin.score.project_keys(model.features.inherent(ids))
    assert cache.num_items == model.features.num_items + 1
    torch.testing.assert_close(cache.key_proj[:, ids], expected)


def test_scorer_explanations_point_at_real_entries_with_largest_weight(served):
    model, info, store, dataset, _ = served
    user = int(heavy_users(dataset, 1)[0])
    seqs = user_sequences(store.get_user(user), 9_500, info.manifest, info.sequence_config)
    _, expl = Scorer(model).score(seqs.long, seqs.short, torch.arange(1, 6), explain=3)
    assert expl is not None and expl.positions.shape == (5, 3)
    assert bool(seqs.long.mask[0, expl.positions].all())
    assert bool((expl.weights[:, :-1] >= expl.weights[:, 1:]).all())  # sorted, largest first
    assert bool((expl.weights > 0).all()) and bool((expl.weights.sum(1) <= 1 + 1e-6).all())


def test_scorer_matches_training_forward_on_a_raw_store_bootstrap(serve_data, tmp_path):
    """twin without a compressed folder: the store holds each user's L most recent behaviors."""
    model, info = load_model(serve_data["twin"])
    store = SqliteStore(tmp_path / "s.db", [c.name for c in info.manifest.cross_numerics],
                        context_length(info.sequence_config))
    bootstrap_raw(store, serve_data["dataset"])
    dataset = load_dataset(serve_data["dataset"])
    candidates = np.arange(1, 31, dtype=np.int64)
    for user in heavy_users(dataset, 2):
        expected = _training_logits(model, info, dataset, None, int(user), 10_000, candidates)
        seqs = user_sequences(store.get_user(int(user)), 10_000, info.manifest, info.sequence_config)
        got, _ = Scorer(model).score(seqs.long, seqs.short, torch.from_numpy(candidates))
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(("n", "k", "H"), [(50, 8, 2), (300, 20, 4), (9, 8, 3)])
def test_gsu_merge_equals_topk_merge(n, k, H):
    from twinv2.models.attention import topk_merge
    from twinv2.serve.scorer import _gsu_merge

    torch.manual_seed(n)
    alpha = torch.randn(H, 6, n)  # distinct scores (the order of exact ties is unspecified in both)
    alpha[1] = alpha[0] + 0.01 * alpha[1]  # heads that largely agree: their top k overlap
    expected, _ = topk_merge(alpha.permute(1, 2, 0), torch.ones(6, n, dtype=torch.bool), k)
    assert torch.equal(_gsu_merge(alpha, k), expected)



@pytest.mark.parametrize(("long_term", "options"), [
    ("twinv2", {"esu_null_slot": True}),
    ("twinv2", {"esu_evidence": True}),
    ("twinv2", {"relevance": "paper"}),
    ("twin", {"match_features": ["category_id"], "match_init": 2.0}),
    ("dare", {}),
    ("twinv2", {"attention_embeddings": True, "attention_dim": 6}),
])
def test_scorer_matches_training_forward_with_model_options(serve_data, tmp_path, long_term, options):
    """Options inside the shared modules (the ESU's null slot, the score's relevance form, DARE's attention
    tables) are served as trained."""
    dataset = load_dataset(serve_data["dataset"])
    compressed_path = serve_data["compressed"] if long_term == "twinv2" else None
    path = save_model(dataset, long_term, tmp_path / "m.pt", compressed_path, seed=4, **options)
    model, info = load_model(path)
    store = SqliteStore(tmp_path / "s.db", [c.name for c in info.manifest.cross_numerics],
                        context_length(info.sequence_config))
    load_version(store, serve_data["compressed"])
    compressed = load_compressed(serve_data["compressed"]) if long_term == "twinv2" else None
    candidates = np.arange(1, 61, dtype=np.int64)
    user = int(heavy_users(dataset, 1)[0])
    for ts in (7_000, 10_000):
        expected = _training_logits(model, info, dataset, compressed, user, ts, candidates)
        seqs = user_sequences(store.get_user(user), ts, info.manifest, info.sequence_config)
        assert int(seqs.long.mask.sum()) > ESU_SIZE  # the GSU really selects
        got, expl = Scorer(model).score(seqs.long, seqs.short, torch.from_numpy(candidates), explain=3)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if options.get("esu_null_slot"):
        assert expl is not None and bool((expl.weights.sum(1) < 1).all())  # the null slot takes its share


def test_explanations_say_which_attributes_matched(serve_data, tmp_path):
    """With the exact-match term, each explained entry lists the categoricals it shares with the candidate."""
    model, info = load_model(serve_data["twin"])
    names = model.long_term.twin.match.names
    assert names == tuple(model.features.categorical_names) and names  # the default: every categorical
    dataset = load_dataset(serve_data["dataset"])
    store = SqliteStore(tmp_path / "s.db", [c.name for c in info.manifest.cross_numerics],
                        context_length(info.sequence_config))
    bootstrap_raw(store, serve_data["dataset"])
    seqs = user_sequences(store.get_user(int(heavy_users(dataset, 1)[0])), 10_000, info.manifest,
                          info.sequence_config)
    candidates = torch.arange(1, 21)
    _, expl = Scorer(model).score(seqs.long, seqs.short, candidates, explain=5)
    assert expl is not None and expl.match_names == names
    entry_items = seqs.long.item_id[0][expl.positions.clamp_min(0)]  # [B, m]
    for f, name in enumerate(names):
        codes = model.features.item_category(name)
        expected = (codes[entry_items] == codes[candidates][:, None]) & (codes[candidates][:, None] != 0)
        assert torch.equal(expl.matched[..., f], expected & (expl.positions >= 0))
    assert bool(expl.matched.any()) and not bool(expl.matched.all())  # the check can fail both ways


def test_gsu_match_index_equals_the_dense_match_term(serve_data):
    """The GSU's sparse scatter of the match term equals the training module's dense term, unknown codes
    (which never match) included."""
    from twinv2.serve.scorer import _MatchIndex

    model, _ = load_model(serve_data["twin"])
    match = model.long_term.twin.match
    gen = torch.Generator().manual_seed(0)
    n, c = 300, 17
    unknown = match.unknown_rows
    codes = unknown + torch.randint(0, 4, (n, len(unknown)), generator=gen)  # value 0 = unknown, often
    cand = unknown + torch.randint(0, 4, (c, len(unknown)), generator=gen)
    alpha = torch.randn(match.weight.shape[1], c, n, generator=gen)
    expected = alpha + match(cand, codes.expand(c, -1, -1)).permute(2, 0, 1).detach()
    got = alpha.clone()
    with torch.no_grad():
        _MatchIndex(match, codes).add_to(got, cand)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not torch.equal(got, alpha)

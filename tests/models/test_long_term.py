"""Each long-term module does what its paper says: what it selects, what it reads, what it outputs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tests.models.model_testing import random_batch, tiny_config
from twinv2.data.batches import SequenceBatch
from twinv2.errors import ConfigError
from twinv2.models import LONG_TERM_MODULES, build_model
from twinv2.models.attention import topk_merge
from twinv2.models.eta import simhash_signs
from twinv2.models.sdim import hash_codes
from twinv2.models.sim import SimHardLongTerm


@pytest.mark.parametrize("name", list(LONG_TERM_MODULES))
def test_long_term_output_shape_and_finite(model_dataset, name):
    model = build_model(tiny_config(name), model_dataset.manifest, model_dataset.items)
    batch = random_batch(model_dataset, B=5, L=20, lengths=[20, 13, 5, 1, 0], max_size=6)
    query = model.features.inherent(batch.target_item)
    out = model.long_term(model.features, query, batch.target_item, batch.long)
    assert out.shape == (5, model.long_term.out_dim)
    assert torch.isfinite(out).all()
    assert (out[4] == 0).all()  # no behavior, no long-term signal


def test_sim_hard_selects_most_recent_same_category(model_dataset):
    config = tiny_config("sim_hard", esu_size=3)
    model = build_model(config, model_dataset.manifest, model_dataset.items)
    module = model.long_term
    assert isinstance(module, SimHardLongTerm) and module.category == "category_id"
    codes = model_dataset.items["category_id"]
    target = int(np.flatnonzero(codes[1:] > 0)[0]) + 1
    same = [i for i in range(1, len(codes)) if codes[i] == codes[target]]
    other = [i for i in range(1, len(codes)) if codes[i] != codes[target]]
    # positions 0..9 (0 = most recent): same-category items at 2, 5, 6, 9
    items = [other[0], other[1], same[0], other[2], other[3], same[1 % len(same)], same[0], other[4], other[5],
             same[0]]
    seq = SequenceBatch(torch.tensor([items]), torch.zeros(1, 10, 4), torch.ones(1, 10),
                        torch.ones(1, 10, dtype=torch.bool))
    scores, searchable = module.search_scores(model.features, torch.tensor([target]), seq)
    index, valid = topk_merge(scores[..., None], searchable, 3)
    assert index.tolist() == [[2, 5, 6]] and valid.all()


def test_sim_hard_unknown_category_matches_nothing(model_dataset):
    model = build_model(tiny_config("sim_hard"), model_dataset.manifest, model_dataset.items)
    codes = model_dataset.items["category_id"]
    unknown = [i for i in range(1, len(codes)) if codes[i] == 0]
    assert unknown, "the tiny dataset draws category codes from 0..3, so some item has code 0"
    seq = SequenceBatch(torch.tensor([unknown * 3]), torch.zeros(1, 3 * len(unknown), 4),
                        torch.ones(1, 3 * len(unknown)), torch.ones(1, 3 * len(unknown), dtype=torch.bool))
    _, searchable = model.long_term.search_scores(model.features, torch.tensor([unknown[0]]), seq)
    assert not searchable.any()


def test_sim_hard_without_categoricals_is_a_config_error(model_dataset):
    manifest = dataclasses.replace(model_dataset.manifest, item_columns=[
        c for c in model_dataset.manifest.item_columns if c.role != "inherent_categorical"])
    items = {k: v for k, v in model_dataset.items.items() if k in ("item_id", "duration")}
    with pytest.raises(ConfigError, match="inherent categorical"):
        build_model(tiny_config("sim_hard"), manifest, items)
    with pytest.raises(ConfigError, match="available"):
        build_model(tiny_config("sim_hard", sim_category="genre"), model_dataset.manifest, model_dataset.items)


def test_sim_soft_selects_largest_inner_products(model_dataset):
    model = build_model(tiny_config("sim_soft", esu_size=4), model_dataset.manifest, model_dataset.items)
    batch = random_batch(model_dataset, B=3, L=20)
    scores, _ = model.long_term.search_scores(model.features, batch.target_item, batch.long)
    emb = model.features.id_embedding.weight
    expected = (emb[batch.long.item_id] * emb[batch.target_item][:, None, :]).sum(-1)
    torch.testing.assert_close(scores, expected)


def test_eta_hamming_distance_matches_bit_count(model_dataset):
    model = build_model(tiny_config("eta", eta_hash_bits=16), model_dataset.manifest, model_dataset.items)
    module = model.long_term
    batch = random_batch(model_dataset, B=2, L=20)
    scores, _ = module.search_scores(model.features, batch.target_item, batch.long)
    target = simhash_signs(model.features.inherent(batch.target_item), module.hyperplanes) > 0
    behaviors = simhash_signs(model.features.inherent(batch.long.item_id), module.hyperplanes) > 0
    hamming = (behaviors != target[:, None, :]).sum(-1)  # [B, L] by counting differing bits
    L = batch.long.item_id.shape[1]
    expected = -(hamming.double() * (L + 1) + torch.arange(L, dtype=torch.float64))
    torch.testing.assert_close(scores, expected)
    # Smaller distance always ranks first; ties go to the more recent position.
    order = scores[0].argsort(descending=True)
    keys = list(zip(hamming[0, order].tolist(), order.tolist(), strict=True))
    assert keys == sorted(keys)


def test_eta_and_sdim_hash_functions_are_fixed_by_seed(model_dataset):
    a = build_model(tiny_config("eta", hash_seed=3), model_dataset.manifest, model_dataset.items)
    b = build_model(tiny_config("eta", hash_seed=3), model_dataset.manifest, model_dataset.items)
    c = build_model(tiny_config("eta", hash_seed=4), model_dataset.manifest, model_dataset.items)
    assert torch.equal(a.long_term.hyperplanes, b.long_term.hyperplanes)
    assert not torch.equal(a.long_term.hyperplanes, c.long_term.hyperplanes)
    assert "long_term.hyperplanes" in a.state_dict()  # a checkpoint reproduces the hashes


def test_sdim_equals_slow_collision_aggregation(model_dataset):
    model = build_model(tiny_config("sdim"), model_dataset.manifest, model_dataset.items)
    module, f = model.long_term, model.features
    batch = random_batch(model_dataset, B=3, L=20, lengths=[20, 9, 0])
    query = f.inherent(batch.target_item)
    with torch.no_grad():
        out = module(f, query, batch.target_item, batch.long)
        codes = hash_codes(f.inherent(batch.long.item_id), module.hyperplanes)  # [B, L, m]
        target = hash_codes(query, module.hyperplanes)  # [B, m]
        values = f.full(batch.long.item_id, f.cross_rows(batch.long.cross))
    m = module.hyperplanes.shape[1]
    for b in range(3):
        per_hash = []
        for j in range(m):
            total = torch.zeros(f.full_dim)
            for i in range(20):
                if batch.long.mask[b, i] and codes[b, i, j] == target[b, j]:
                    total += values[b, i]
            norm = float(total.norm())
            per_hash.append(total / norm if norm > 0 else total)
        torch.testing.assert_close(out[b], torch.stack(per_hash).mean(0), rtol=1e-5, atol=1e-6)
    assert (out[2] == 0).all()


def test_hash_codes_bits():
    vectors = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    hyperplanes = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # D=2, m=1, tau=2: bit 0 = x >= 0, bit 1 = y >= 0
    assert hash_codes(vectors, hyperplanes).tolist() == [[3], [2], [3]]


def test_din_reads_only_the_most_recent_din_len(model_dataset):
    config = tiny_config("din", din_len=7)
    model = build_model(config, model_dataset.manifest, model_dataset.items)
    batch = random_batch(model_dataset, B=2, L=20, lengths=[20, 20])
    query = model.features.inherent(batch.target_item)
    out = model.long_term(model.features, query, batch.target_item, batch.long)
    changed = batch.long.item_id.clone()
    changed[:, 7:] = 1 + (changed[:, 7:] % model_dataset.manifest.num_items)
    other = dataclasses.replace(batch.long, item_id=changed)
    torch.testing.assert_close(model.long_term(model.features, query, batch.target_item, other), out)
    changed[:, 6] = 1 + (changed[:, 6] % model_dataset.manifest.num_items)
    other = dataclasses.replace(batch.long, item_id=changed)
    assert not torch.allclose(model.long_term(model.features, query, batch.target_item, other), out)


def test_avg_pool_is_masked_mean(model_dataset):
    model = build_model(tiny_config("avg_pool"), model_dataset.manifest, model_dataset.items)
    f = model.features
    batch = random_batch(model_dataset, B=2, L=20, lengths=[20, 3])
    out = model.long_term(f, None, batch.target_item, batch.long)
    values = f.full(batch.long.item_id, f.cross_rows(batch.long.cross))
    torch.testing.assert_close(out[1], values[1, :3].mean(0))

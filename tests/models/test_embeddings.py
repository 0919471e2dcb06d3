"""Feature embeddings: bucketisation, item-table lookups, cross projection table, input validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.models.model_testing import NUM_ITEMS, tiny_config
from twinv2.errors import ConfigError, DataValidationError
from twinv2.models.embeddings import FeatureEmbeddings, log_buckets, num_log_buckets, ratio_buckets


def test_log_buckets_monotone_signed_and_in_range():
    x = torch.tensor([-1e12, -1000.0, -1.0, -0.4, 0.0, 0.4, 1.0, 59.0, 60.0, 90.0, 1000.0, 1e12])
    b = log_buckets(x, per_octave=2)
    assert (b[1:] >= b[:-1]).all()  # order preserved
    assert b.min() >= 0 and b.max() < num_log_buckets(2)
    half = num_log_buckets(2) // 2
    assert (b[x < 0] < half).all() and (b[x >= 0] >= half).all()  # sign folded into separate halves
    assert b[7] != b[9]  # 59 s and 90 s of play time differ at half-octave resolution
    assert b[0] == 0 and b[-1] == num_log_buckets(2) - 1  # huge magnitudes clip to the end buckets


def test_ratio_buckets_uniform_and_clipped():
    x = torch.tensor([-0.1, 0.0, 0.049, 0.05, 0.5, 0.999, 1.0, 1.5])
    assert ratio_buckets(x, 20).tolist() == [0, 0, 0, 1, 10, 19, 19, 19]


def test_inherent_dims_and_lookup_by_item_id(model_dataset):
    config = tiny_config()
    f = FeatureEmbeddings(config, model_dataset.manifest, model_dataset.items)
    # id + 2 categoricals + duration
    assert f.inherent_dim == config.id_dim + 3 * config.feature_dim
    assert f.cross_names == ["play_time", "completion_ratio", "label", "time_gap"]
    assert f.full_dim == f.inherent_dim + 4 * config.feature_dim
    ids = torch.tensor([[3, 7], [7, 0]])
    k = f.inherent(ids)
    assert k.shape == (2, 2, f.inherent_dim)
    # A virtual item carries its representative's id, so it gets exactly that item's inherent features.
    assert torch.equal(k[0, 1], k[1, 0])
    assert torch.equal(k[1, 1, :config.id_dim], torch.zeros(config.id_dim))  # padding id row is zero
    codes = f.item_category("category_id")
    assert torch.equal(codes, torch.from_numpy(model_dataset.items["category_id"]))


def test_cross_projection_table_equals_block_diagonal_projection(model_dataset):
    config = tiny_config()
    f = FeatureEmbeddings(config, model_dataset.manifest, model_dataset.items)
    H, J, F = 3, f.num_cross, config.feature_dim
    weights = torch.randn(H, J, F)
    cross = torch.tensor([[[120.0, 0.4, 1.0, 3600.0], [5.0, 0.95, 0.0, 9e6]]])  # [1, 2, J]
    rows = f.cross_rows(cross)
    table = f.cross_projection_table(weights)
    via_table = table[rows].sum(dim=2)  # [1, 2, H]
    emb = f.cross_embedding(rows)  # [1, 2, J, F]
    direct = torch.einsum("bljf,hjf->blh", emb, weights)
    torch.testing.assert_close(via_table, direct)


def test_cross_rows_rejects_wrong_channel_count(model_dataset):
    f = FeatureEmbeddings(tiny_config(), model_dataset.manifest, model_dataset.items)
    with pytest.raises(ConfigError, match="cross channels"):
        f.cross_rows(torch.zeros(2, 3, 5))


@pytest.mark.parametrize(("change", "match"), [
    (lambda items: items.pop("category_id"), "category_id.*missing"),
    (lambda items: items.__setitem__("duration", np.zeros(3, np.float32)), "duration.*shape"),
    (lambda items: items.__setitem__("author_id", np.full(NUM_ITEMS + 1, 99)), "author_id.*codes in"),
])
def test_item_tables_validated(model_dataset, change, match):
    items = dict(model_dataset.items)
    change(items)
    with pytest.raises(DataValidationError, match=match):
        FeatureEmbeddings(tiny_config(), model_dataset.manifest, items)


def test_item_category_unknown_name(model_dataset):
    f = FeatureEmbeddings(tiny_config(), model_dataset.manifest, model_dataset.items)
    with pytest.raises(ConfigError, match="available"):
        f.item_category("genre")

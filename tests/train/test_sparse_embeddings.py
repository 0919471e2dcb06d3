"""Sparse gradients for the lookup tables (``optim.sparse_embeddings``): the lookup tables get sparse
gradients, the cross table keeps a dense one, and a run follows the dense run's trajectory."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rich.console import Console

from tests.train.conftest import tiny_config
from twinv2.data.batches import BatchBuilder, SequenceConfig
from twinv2.data.split import make_samples
from twinv2.data.store import load_dataset
from twinv2.errors import ConfigError
from twinv2.models import build_model
from twinv2.train.inputs import make_split
from twinv2.train.loop import train_model

# Adagrad's accumulator starts at 0.1 here: with 0 a coordinate's first update is ~lr * sign(gradient) however
# small the gradient, and a sparse gradient sums duplicate rows in another order than a dense one (see
# tests/train/test_distributed.py).
STABLE = {"optim__embedding_initial_accumulator": 0.1}


@pytest.fixture(scope="module")
def dataset(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir)


@pytest.mark.parametrize("name", ["twin", "dare"])
def test_lookup_tables_get_sparse_gradients_and_the_cross_table_a_dense_one(dataset, name):
    cfg = tiny_config(model__long_term=name)
    model = build_model(cfg.model, dataset.manifest, dataset.items)
    for table in model.lookup_tables():
        table.sparse = True
    samples = make_samples(dataset, make_split(dataset, cfg), "train")
    batch = BatchBuilder(dataset, SequenceConfig(long_len=30, short_len=10)).build(samples, np.arange(32))
    F.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
    lookups = {id(t.weight) for t in model.lookup_tables()}
    assert id(model.features.id_embedding.weight) in lookups
    assert id(model.features.cross_embedding.weight) not in lookups
    for p in model.parameters():
        assert p.grad is not None and p.grad.is_sparse == (id(p) in lookups)
    # A sparse gradient holds the rows the batch touched, not the vocabulary.
    id_grad = model.features.id_embedding.weight.grad.coalesce()
    touched = torch.cat([batch.target_item, batch.long.item_id.flatten(), batch.short.item_id.flatten()]).unique()
    assert set(id_grad.indices()[0].tolist()) <= set(touched.tolist())


def test_sparse_embeddings_follow_the_dense_trajectory(dataset, tmp_path):
    quiet = Console(file=io.StringIO())
    states = {}
    for sparse in (False, True):
        cfg = tiny_config(model__long_term="twin", train__epochs=2, optim__sparse_embeddings=sparse, **STABLE)
        train_model(dataset, tmp_path / str(sparse), cfg, show_progress=False, console=quiet)
        states[sparse] = torch.load(tmp_path / str(sparse) / "last.pt", weights_only=True)
    for key, value in states[False]["model_state"].items():
        torch.testing.assert_close(states[True]["model_state"][key], value, rtol=0, atol=1e-5, msg=key)
    np.testing.assert_allclose([v for _, v in states[True]["train_state"]["loss_curve"]],
                               [v for _, v in states[False]["train_state"]["loss_curve"]], rtol=1e-6)


@pytest.mark.parametrize(("overrides", "match"), [
    ({"optim.embedding": "adam"}, r"optim\.embedding.*sparse"),
    ({"optim.weight_decay": 0.01}, r"optim\.weight_decay.*sparse"),
])
def test_sparse_embeddings_refuse_optimisers_without_sparse_updates(overrides, match):
    with pytest.raises(ConfigError, match=match):
        tiny_config(optim__sparse_embeddings=True, **{k.replace(".", "__"): v for k, v in overrides.items()})

"""The CTR model end to end: shapes, gradients, masks, equivalences, config and data errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tests.models.model_testing import random_batch, replace_sequence, tiny_config
from twinv2.errors import ConfigError
from twinv2.models import LONG_TERM_MODULES, LONG_TERM_NAMES, CTRModel, ModelConfig, build_model

NAMES = list(LONG_TERM_MODULES)


def _model(dataset, name, seed=0, **overrides) -> CTRModel:
    torch.manual_seed(seed)
    return build_model(tiny_config(name, **overrides), dataset.manifest, dataset.items)


@pytest.mark.parametrize("name", NAMES)
def test_ctr_logits_shape_and_finite(model_dataset, name):
    model = _model(model_dataset, name)
    logits = model(random_batch(model_dataset, B=6, L=20, max_size=5))
    assert logits.shape == (6,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_ctr_gradients_reach_every_parameter(model_dataset, name):
    model = _model(model_dataset, name)
    batch = random_batch(model_dataset, B=8, L=20, max_size=5)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label)
    loss.backward()
    for param_name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {param_name}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {param_name}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {param_name}"


@pytest.mark.parametrize("name", NAMES)
def test_ctr_builder_batch_runs(model_dataset, builder_batch, name):
    """A batch built by BatchBuilder from real CSR histories goes through every model."""
    logits = _model(model_dataset, name)(builder_batch)
    assert logits.shape == (len(builder_batch),) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_ctr_all_padding_sequences_are_finite(model_dataset, name):
    model = _model(model_dataset, name)
    batch = random_batch(model_dataset, B=4, L=20, lengths=[0, 0, 0, 0])
    batch = dataclasses.replace(batch, short=dataclasses.replace(
        batch.short, mask=torch.zeros_like(batch.short.mask), item_id=torch.zeros_like(batch.short.item_id)))
    logits = model(batch)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", NAMES)
def test_ctr_never_reads_behaviors_past_the_mask(model_dataset, name):
    model = _model(model_dataset, name)
    batch = random_batch(model_dataset, B=5, L=20, lengths=[20, 12, 6, 2, 0], max_size=4)
    base = model(batch)
    pad = ~batch.long.mask
    g = torch.Generator().manual_seed(1)
    garbage = replace_sequence(
        batch,
        item_id=torch.where(pad, torch.randint(1, model_dataset.manifest.num_items + 1, pad.shape, generator=g),
                            batch.long.item_id),
        cross=torch.where(pad[..., None], torch.rand(batch.long.cross.shape, generator=g) * 1e5,
                          batch.long.cross),
        size=torch.where(pad, torch.full(pad.shape, 50.0), batch.long.size))
    torch.testing.assert_close(model(garbage), base)
    # Not vacuous: changing a real behavior that the module reads changes the logits.
    item = batch.long.item_id.clone()
    item[:, 0] = 1 + item[:, 0] % model_dataset.manifest.num_items
    assert not torch.allclose(model(replace_sequence(batch, item_id=item)), base)


def test_twinv2_with_unit_sizes_equals_twin(model_dataset):
    twin = _model(model_dataset, "twin", seed=0)
    twinv2 = _model(model_dataset, "twinv2", seed=1)
    twinv2.load_state_dict(twin.state_dict())  # same parameter names: a TWIN checkpoint loads into TWIN-V2
    batch = random_batch(model_dataset, B=6, L=20, max_size=1)
    torch.testing.assert_close(twinv2(batch), twin(batch))
    # ... and the ln n term matters once clusters have sizes.
    sized = replace_sequence(batch, size=torch.where(batch.long.mask, torch.arange(1.0, 21.0).expand(6, 20), 0.0))
    assert not torch.allclose(twinv2(sized), twin(sized))
    ablation = _model(model_dataset, "twinv2", use_log_size=False)
    ablation.load_state_dict(twin.state_dict())
    torch.testing.assert_close(ablation(sized), twin(sized))


def test_ctr_long_source_and_api(model_dataset):
    assert {n: _model(model_dataset, n).long_source() for n in NAMES} == {
        n: "compressed" if n == "twinv2" else "raw" for n in NAMES}
    model = _model(model_dataset, "twinv2")
    table = model.item_embedding_table()
    assert table.shape == (model_dataset.manifest.num_items + 1, 8) and table.dtype == torch.float32
    assert not table.requires_grad and (table[0] == 0).all()
    sparse, dense = model.embedding_parameters(), model.dense_parameters()
    assert len(sparse) == 3
    assert {id(p) for p in sparse} | {id(p) for p in dense} == {id(p) for p in model.parameters()}
    assert not {id(p) for p in sparse} & {id(p) for p in dense}


def test_ctr_rebuilds_from_state_dict_without_items(model_dataset):
    """The item-feature buffers are persistent, so a checkpoint rebuilds the model with items=None."""
    model = _model(model_dataset, "twinv2")
    rebuilt = build_model(model.config, model_dataset.manifest, None)
    batch = random_batch(model_dataset, max_size=3)
    assert not torch.allclose(rebuilt(batch), model(batch))
    rebuilt.load_state_dict(model.state_dict())
    torch.testing.assert_close(rebuilt(batch), model(batch))


def test_unknown_model_name_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown long-term model 'twin3'.*twinv2, twin, dare, sim_soft"):
        ModelConfig(long_term="twin3")
    assert tuple(LONG_TERM_MODULES) == LONG_TERM_NAMES


@pytest.mark.parametrize(("values", "match"), [
    ({"esu_size": 0}, "esu_size"),
    ({"num_heads": 2.5}, "num_heads"),
    ({"mlp_dims": (16, -1)}, "mlp_dims"),
    ({"use_log_size": "yes"}, "use_log_size"),
    ({"sdim_hash_bits": 40}, "sdim_hash_bits"),
    ({"relevance": "exact"}, "relevance"),
    ({"match_init": float("nan")}, "match_init"),
    ({"match_init": True}, "match_init"),
    ({"match_features": "category_id"}, "match_features"),
    ({"attention_embeddings": 1}, "attention_embeddings"),
    ({"attention_dim": 0}, "attention_dim"),
])
def test_model_config_rejects_bad_values(values, match):
    with pytest.raises(ConfigError, match=match):
        ModelConfig(**values)


def test_model_config_dict_roundtrip_and_strict_keys():
    config = ModelConfig(long_term="eta", mlp_dims=(32, 8))
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict({"mlp_dims": [4, 2]}).mlp_dims == (4, 2)
    with pytest.raises(ConfigError, match=r"train.yaml: unknown model key\(s\) \['esu_sise'\]"):
        ModelConfig.from_dict({"esu_sise": 10}, source="train.yaml")


def test_ctr_batch_from_another_schema_is_rejected(model_dataset):
    model = _model(model_dataset, "twin")
    batch = random_batch(model_dataset)
    wrong = replace_sequence(batch, cross=batch.long.cross[..., :3])
    with pytest.raises(ConfigError, match="do not match"):
        model(wrong)


def test_match_features_must_be_categoricals_of_the_dataset(model_dataset):
    with pytest.raises(ConfigError, match=r"'duration' is not an inherent categorical.*category_id"):
        _model(model_dataset, "twin", match_features=("duration",))
    model = _model(model_dataset, "twin", match_features=("author_id",))
    assert model.long_term.twin.match.names == ("author_id",)
    assert _model(model_dataset, "twin", relevance="paper").long_term.twin.match is None


def test_dare_attention_tables_are_embedding_parameters_and_separate(model_dataset):
    """DARE's score reads its own tables: they go to the embedding optimiser, and the representation's
    id table gets no gradient from the score alone."""
    model = _model(model_dataset, "dare")
    keys = model.long_term.twin.keys
    assert keys is not None and model.config.decoupled_attention
    embedding_ids = {id(p) for p in model.embedding_parameters()}
    assert {id(keys.id_embedding.weight), id(keys.side_embedding.weight)} <= embedding_ids
    assert not embedding_ids & {id(p) for p in model.dense_parameters()}
    twin_model = _model(model_dataset, "twin")
    assert twin_model.long_term.twin.keys is None
    assert len(model.embedding_parameters()) == len(twin_model.embedding_parameters()) + 2

"""Strict config loading: unknown keys and wrong types are errors naming the file and the key."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twinv2.errors import ConfigError
from twinv2.train.config import (
    DEFAULT_CONFIG_PATH,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
)


def test_default_yaml_loads_to_the_dataclass_defaults():
    assert load_config(DEFAULT_CONFIG_PATH) == TrainConfig()


def test_default_yaml_lists_every_key():
    import yaml

    listed = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    defaults = config_to_dict(TrainConfig())
    assert {s: set(v) for s, v in listed.items()} == {s: set(v) for s, v in defaults.items()}


def test_load_config_reads_values_and_converts_lists(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  esu_size: 50\n  mlp_dims: [64, 32]\noptim:\n  dense_lr: 1\ntrain:\n  epochs: 3\n")
    cfg = load_config(path)
    assert cfg.model.esu_size == 50 and cfg.model.mlp_dims == (64, 32)
    assert cfg.optim.dense_lr == 1.0 and isinstance(cfg.optim.dense_lr, float)
    assert cfg.train.epochs == 3 and cfg.train.batch_size == TrainConfig().train.batch_size


@pytest.mark.parametrize(("text", "match"), [
    ("model:\n  esu_sise: 50\n", r"c\.yaml: unknown key 'model\.esu_sise'"),
    ("trian:\n  epochs: 1\n", r"c\.yaml: unknown key 'trian'"),
    ("train:\n  epochs: three\n", r"c\.yaml: key 'train\.epochs': expected int, found str 'three'"),
    ("train:\n  epochs: 1.5\n", r"key 'train\.epochs': expected int, found float"),
    ("model:\n  use_log_size: 1\n", r"key 'model\.use_log_size': expected bool"),
    ("model:\n  mlp_dims: 200\n", r"key 'model\.mlp_dims': expected a list"),
    ("model:\n  mlp_dims: [200, x]\n", r"key 'model\.mlp_dims\[1\]': expected int"),
    ("data:\n  max_train_samples: many\n", r"key 'data\.max_train_samples': expected int \| None"),
    ("train:\n  batch_size: 0\n", r"key 'train\.batch_size': expected an integer >= 1"),
    ("optim:\n  dense: rmsprop\n", r"key 'optim\.dense': expected one of"),
    ("model:\n  long_term: twin3\n", r"c\.yaml.*unknown long-term model 'twin3'"),
    ("split:\n  snapshot: 0.95\n", r"key 'split'"),
    ("train: 3\n", r"key 'train': expected a mapping"),
    ("- a\n- b\n", r"c\.yaml: expected a mapping of sections"),
    ("model: [\n", r"c\.yaml: not valid YAML"),
])
def test_load_config_rejects_bad_files_naming_file_and_key(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_load_config_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_parse_yaml_values_and_apply_last(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  esu_size: 50\n")
    cfg = load_config(path, overrides=["model.esu_size=20", "data.max_train_samples=null",
                                       "model.mlp_dims=[8, 4]", "optim.grad_clip=null", "train.device=cpu"])
    assert cfg.model.esu_size == 20 and cfg.data.max_train_samples is None
    assert cfg.model.mlp_dims == (8, 4) and cfg.optim.grad_clip is None and cfg.train.device == "cpu"


@pytest.mark.parametrize(("override", "match"), [
    ("model.esu_size", r"expected section\.key=value"),
    ("esu_size=3", r"expected a key of the form section\.key"),
    ("model.nope=3", r"--set: unknown key 'model\.nope'"),
    ("train.epochs=two", r"--set: key 'train\.epochs': expected int"),
])
def test_overrides_reject_bad_input(override, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(TrainConfig(), [override])


@given(esu=st.integers(1, 10_000), lr=st.floats(1e-6, 10.0), epochs=st.integers(1, 100),
       clip=st.one_of(st.none(), st.floats(0.1, 100.0)))
def test_config_dict_round_trip(esu, lr, epochs, clip):
    cfg = apply_overrides(TrainConfig(), {"model.esu_size": esu, "optim.dense_lr": lr, "train.epochs": epochs,
                                          "optim.grad_clip": clip})
    assert config_from_dict(config_to_dict(cfg)) == cfg

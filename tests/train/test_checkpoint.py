"""Checkpoints describe themselves: the model comes back exactly from the file alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.train.conftest import tiny_config
from twinv2.compress.embeddings import load_checkpoint_item_embeddings, load_embedding_file
from twinv2.data.batches import BatchBuilder, SequenceConfig
from twinv2.data.split import make_samples
from twinv2.data.store import load_dataset
from twinv2.errors import CheckpointError
from twinv2.models import build_model
from twinv2.train.checkpoint import (
    check_dataset_matches,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from twinv2.train.evaluate import export_embeddings
from twinv2.train.loop import make_split


@pytest.fixture(scope="module")
def dataset(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir)


@pytest.fixture(scope="module")
def saved(dataset, tmp_path_factory):
    """A randomly initialised twin model saved to a checkpoint, with a batch to compare predictions on."""
    cfg = tiny_config(model__long_term="twin")
    torch.manual_seed(3)
    model = build_model(cfg.model, dataset.manifest, dataset.items).eval()
    split = make_split(dataset, cfg)
    seq = SequenceConfig(long_len=cfg.data.long_len, short_len=cfg.model.short_len, long_source="raw")
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    save_checkpoint(path, model, config=cfg, sequence_config=seq, split=split, dataset=dataset,
                    compressed_path=None, train_state={"step": 7, "history": []})
    batch = BatchBuilder(dataset, seq).build(make_samples(dataset, split, "test", max_samples=50))
    return path, model, batch, cfg, split


def test_load_checkpoint_rebuilds_the_exact_model(saved):
    path, model, batch, cfg, split = saved
    loaded, info = load_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded(batch), model(batch))
    assert info.config == cfg and info.split == split and info.train_state["step"] == 7
    assert info.sequence_config.long_len == cfg.data.long_len and not loaded.training


def test_checkpoint_loads_with_weights_only_and_has_the_contract_keys(saved):
    path, model, *_ = saved
    payload = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model_state", "model_config", "sequence_config", "split", "manifest_fingerprint",
                "dataset_path", "compressed_path", "package_version", "train_state", "item_embeddings"):
        assert key in payload, key
    table = payload["item_embeddings"]
    assert table.dtype == torch.float32 and torch.equal(table, model.item_embedding_table())


def test_compression_job_reads_the_checkpoint_embeddings(saved):
    path, model, *_ = saved
    ids, matrix = load_checkpoint_item_embeddings(path)
    assert np.array_equal(matrix, model.item_embedding_table().numpy()[1:])
    assert np.array_equal(ids, np.arange(1, len(matrix) + 1))


@pytest.mark.parametrize("suffix", [".parquet", ".npy"])
def test_export_embeddings_writes_the_file_format_the_job_reads(saved, tmp_path, suffix):
    path, model, *_ = saved
    out = export_embeddings(path, tmp_path / f"emb{suffix}")
    ids, matrix = load_embedding_file(out)
    table = model.item_embedding_table().numpy()
    assert np.array_equal(ids, np.arange(1, table.shape[0])) and np.array_equal(matrix, table[1:])


def test_checkpoint_and_dataset_that_do_not_match_are_an_error(saved, dataset, tmp_path):
    import dataclasses

    from tests.conftest import make_tiny_dataset

    path, *_ = saved
    _, info = load_checkpoint(path)
    check_dataset_matches(info, dataset)  # its own dataset: fine
    other_schema = dataclasses.replace(dataset, manifest=dataclasses.replace(dataset.manifest,
                                                                             num_items=dataset.manifest.num_items + 1))
    with pytest.raises(CheckpointError, match="do not match: 'fingerprint'"):
        check_dataset_matches(info, other_schema)
    # Same schema, users, event count and time range, other events: told apart by the per-user counts.
    same_shape = load_dataset(make_tiny_dataset(tmp_path / "other", seed=1))
    assert same_shape.manifest.fingerprint() == dataset.manifest.fingerprint()
    with pytest.raises(CheckpointError, match="do not match: 'user_counts_sha256'"):
        check_dataset_matches(info, same_shape)


def test_damaged_or_foreign_files_are_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a twinv2 checkpoint"):
        read_checkpoint(tmp_path / "foreign.pt")


def test_save_checkpoint_is_atomic(saved, tmp_path, monkeypatch, dataset):
    path, model, _, cfg, split = saved
    target = tmp_path / "a.pt"
    target.write_bytes(path.read_bytes())
    before = target.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, model, config=cfg, sequence_config=SequenceConfig(long_len=5), split=split,
                        dataset=dataset, compressed_path=None, train_state={})
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_checkpoint_from_before_the_relevance_option_loads_as_the_paper_score(saved, tmp_path):
    """Files written before ``relevance`` existed hold the paper's score (no match weights) and still load,
    although the default is now ``match``."""
    path, _, batch, *_ = saved
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["model_config"] = {k: v for k, v in payload["model_config"].items()
                               if k not in ("relevance", "match_init", "match_features")}
    payload["train_config"]["model"] = dict(payload["model_config"])
    state = payload["model_state"]
    for key in [k for k in state if ".match." in k]:
        del state[key]
    old = tmp_path / "old.pt"
    torch.save(payload, old)
    loaded, info = load_checkpoint(old)
    assert info.config.model.relevance == "paper" and loaded.long_term.twin.match is None
    from twinv2.checkpoints import load_model

    served, served_info = load_model(old)
    assert served_info.model_config.relevance == "paper"
    with torch.no_grad():
        torch.testing.assert_close(served(batch), loaded(batch))

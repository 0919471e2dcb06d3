"""Batches built off the training thread: worker processes yield exactly the batches the training thread
builds itself, in the same order, for raw and compressed sequences; a global batch is split across ranks
without overlap or loss."""

from __future__ import annotations

import io
from dataclasses import fields

import numpy as np
import pytest
import torch
from rich.console import Console

from tests.train.conftest import tiny_config
from twinv2.data.batches import Batch, BatchBuilder, CompressedSequences, SequenceBatch, SequenceConfig
from twinv2.data.split import make_samples
from twinv2.data.store import load_dataset
from twinv2.train import pipeline
from twinv2.train.inputs import make_split, open_compressed
from twinv2.train.loop import train_model
from twinv2.train.pipeline import EpochBatches, auto_loader_workers, epoch_batches


@pytest.fixture(scope="module")
def dataset(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir)


@pytest.fixture(scope="module")
def compressed(dataset, tmp_path_factory):
    from twinv2.compress import compress_dataset

    split = make_split(dataset, tiny_config())
    out = tmp_path_factory.mktemp("clusters") / "train"
    compress_dataset(dataset.path, out, split.snapshot_ts, workers=1, progress=False)
    return open_compressed(out, dataset, split.snapshot_ts, model_name="twinv2")


def assert_same_batch(a: Batch, b: Batch) -> None:
    for f in fields(Batch):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, SequenceBatch):
            for g in fields(SequenceBatch):
                u, v = getattr(x, g.name), getattr(y, g.name)
                assert (u is None and v is None) or torch.equal(u, v), f"{f.name}.{g.name}"
        else:
            assert torch.equal(x, y), f.name


def test_compressed_life_cycles_satisfy_the_batch_builders_interface(compressed):
    # data/ names only CompressedSequences; the compression layer's loader must keep providing it.
    assert isinstance(compressed, CompressedSequences)


@pytest.mark.parametrize("source", ["raw", "compressed"])
def test_worker_batches_equal_the_training_thread_batches(dataset, compressed, source):
    cfg = tiny_config()
    seq = SequenceConfig(long_len=30, short_len=10, long_source=source)
    builder = BatchBuilder(dataset, seq, compressed if source == "compressed" else None)
    samples = make_samples(dataset, make_split(dataset, cfg), "train")
    order = np.random.default_rng([0, 1]).permutation(len(samples))
    batches = EpochBatches(builder, samples, order, 64)
    start = 2  # as when resuming mid-epoch
    on_thread = list(epoch_batches(batches, start, workers=0))
    off_thread = list(epoch_batches(batches, start, workers=2))
    assert len(on_thread) == len(off_thread) == len(batches) - start
    for a, b in zip(on_thread, off_thread, strict=True):
        assert a.global_size == b.global_size and a.stand_in == b.stand_in
        assert_same_batch(a.batch, b.batch)
    # ...and both are what the builder gives for those samples directly.
    assert_same_batch(on_thread[0].batch, builder.build(samples, order[2 * 64:3 * 64]))


def test_an_early_break_stops_the_workers(dataset):
    builder = BatchBuilder(dataset, SequenceConfig(long_len=30, short_len=10))
    samples = make_samples(dataset, make_split(dataset, tiny_config()), "train")
    stream = epoch_batches(EpochBatches(builder, samples, np.arange(len(samples)), 16), workers=1)
    next(stream)
    stream.close()  # what the loop does at a step budget or early stop; must not hang or leak
    assert not [p for p in __import__("multiprocessing").active_children() if p.is_alive()]


@pytest.mark.parametrize("world", [2, 3])
def test_each_global_batch_is_split_across_ranks_without_overlap_or_loss(dataset, world):
    builder = BatchBuilder(dataset, SequenceConfig(long_len=30, short_len=10))
    samples = make_samples(dataset, make_split(dataset, tiny_config()), "train")
    n = len(samples)
    bs = 149 if world == 2 else 148  # leaves a last global batch of 1 or 5 samples
    order = np.random.default_rng(0).permutation(n)
    whole = EpochBatches(builder, samples, order, bs)
    parts = [EpochBatches(builder, samples, order, bs, rank=r, world_size=world) for r in range(world)]
    for b in range(len(whole)):
        items = [p[b] for p in parts]
        assert {i.global_size for i in items} == {len(whole[b].batch)}
        real = [i.batch for i in items if not i.stand_in]
        joined = torch.cat([r.target_item for r in real])
        assert torch.equal(joined, whole[b].batch.target_item)  # rank order = sample order, nothing twice
        assert torch.equal(torch.cat([r.ts for r in real]), whole[b].batch.ts)


def test_loader_workers_do_not_change_the_run(dataset, tmp_path):
    quiet = Console(file=io.StringIO())
    runs = {}
    for workers in (0, 1):
        cfg = tiny_config(model__long_term="twin", train__loader_workers=workers, train__max_steps=6)
        train_model(dataset, tmp_path / str(workers), cfg, show_progress=False, console=quiet)
        runs[workers] = torch.load(tmp_path / str(workers) / "last.pt", weights_only=True)
    for key, value in runs[0]["model_state"].items():
        assert torch.equal(value, runs[1]["model_state"][key]), key
    assert runs[0]["train_state"]["loss_curve"] == runs[1]["train_state"]["loss_curve"]


def test_auto_loader_workers_build_on_the_thread_on_cpu_and_off_it_on_cuda(monkeypatch):
    monkeypatch.setattr(pipeline, "available_cores", lambda: 2)
    assert auto_loader_workers(1) == 0 and auto_loader_workers(1, local_world_size=2) == 0
    assert auto_loader_workers(1, device=torch.device("cuda")) == 1
    monkeypatch.setattr(pipeline, "available_cores", lambda: 16)
    assert auto_loader_workers(15) == 0
    assert auto_loader_workers(3, local_world_size=4, device=torch.device("cuda")) == 2

"""Training batches, built on the training thread or by worker processes ahead of it.

One epoch is a fixed list of global batches (``batch_size`` samples each, in the order that
``(seed, epoch)`` gives); :class:`EpochBatches` is that list as a map-style ``torch.utils.data.Dataset``
whose item ``b`` is this rank's part of global batch ``b`` (:func:`~twinv2.train.distributed.local_part`),
sliced from the CSR histories by :class:`~twinv2.data.batches.BatchBuilder`. :func:`epoch_batches` yields
the items from a given batch on, either directly (``workers = 0``) or from a ``DataLoader`` whose worker
processes build the next batches while the model trains on the current one. The workers run the same
``BatchBuilder.build`` on the same indices, so the batches are identical (tested), in the same order.

Workers are forked where the platform allows it: they inherit the dataset arrays (copy-on-write, nothing
is pickled or copied). A worker packs its finished batch into ONE shared-memory buffer (:func:`_pack`) and the
training thread takes views of it (:func:`_unpack`): receiving a batch costs one shared segment instead of
one per tensor (measured at L = 1,000, B = 256: 2.5 ms instead of 4.2 ms, against 11.6 ms to build it). On
CUDA the buffer is pinned, so the copy to the GPU can overlap the previous step.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import fields
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from twinv2.data.batches import Batch, BatchBuilder, SequenceBatch
from twinv2.data.split import Samples
from twinv2.train._runtime import available_cores
from twinv2.train.distributed import local_part

__all__ = ["EpochBatches", "LocalBatch", "auto_loader_workers", "epoch_batches"]

# Batches each worker keeps ready ahead of the training thread (DataLoader's prefetch_factor).
_PREFETCH = 2


class LocalBatch(NamedTuple):
    """One step's input on this rank.

    Attributes:
        batch: this rank's samples of the global batch (``[b]`` rows).
        global_size: samples in the global batch (over all ranks): the loss is averaged over them.
        stand_in: True when the global batch had no sample left for this rank and ``batch`` is a
            stand-in row whose loss weighs 0.
    """

    batch: Batch
    global_size: int
    stand_in: bool


class EpochBatches(Dataset):
    """The global batches of one epoch as a map-style dataset: item ``b`` is this rank's :class:`LocalBatch`
    of samples ``order[b * batch_size:(b + 1) * batch_size]``.

    Args:
        builder: slices the sequences; samples: the training samples ``[N]``.
        order: int64 ``[N]`` the epoch's sample order; batch_size: the global batch size.
        rank, world_size: this rank's part of each global batch (1 rank: the whole batch).
    """

    def __init__(self, builder: BatchBuilder, samples: Samples, order: np.ndarray, batch_size: int, *,
                 rank: int = 0, world_size: int = 1):
        self.builder, self.samples, self.order = builder, samples, order
        self.batch_size, self.rank, self.world_size = int(batch_size), int(rank), int(world_size)

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __getitem__(self, b: int) -> LocalBatch:
        index = self.order[b * self.batch_size:(b + 1) * self.batch_size]
        part, stand_in = local_part(index, self.rank, self.world_size)
        return LocalBatch(self.builder.build(self.samples, part), len(index), stand_in)


# -- one buffer per batch between processes ---------------------------------------------------------------
_ALIGN = 64  # byte alignment of each tensor in the packed buffer (any dtype can be viewed at such an offset)


class _Packed(NamedTuple):
    """A :class:`LocalBatch` as one uint8 buffer plus ``(field, dtype, shape, byte offset)`` per tensor."""

    buffer: torch.Tensor
    layout: list[tuple[str, torch.dtype, tuple[int, ...], int]]
    global_size: int
    stand_in: bool


def _tensors(batch: Batch) -> list[tuple[str, torch.Tensor]]:
    """Every tensor of ``batch`` by dotted field name (``long.cross``); absent optional fields skipped."""
    out = []
    for f in fields(Batch):
        value = getattr(batch, f.name)
        if isinstance(value, SequenceBatch):
            out += [(f"{f.name}.{g.name}", getattr(value, g.name)) for g in fields(SequenceBatch)
                    if getattr(value, g.name) is not None]
        else:
            out.append((f.name, value))
    return out


def _pack(item: LocalBatch) -> _Packed:
    """Copy every tensor of the batch into one buffer (runs in the worker, as the DataLoader's collate)."""
    tensors = _tensors(item.batch)
    offsets, size = [], 0
    for _, t in tensors:
        offsets.append(size)
        size += -(-t.numel() * t.element_size() // _ALIGN) * _ALIGN
    buffer = torch.empty(size, dtype=torch.uint8)
    layout = []
    for (name, t), offset in zip(tensors, offsets, strict=True):
        nbytes = t.numel() * t.element_size()
        buffer[offset:offset + nbytes].view(t.dtype).view(t.shape).copy_(t)
        layout.append((name, t.dtype, tuple(t.shape), offset))
    return _Packed(buffer, layout, item.global_size, item.stand_in)


def _unpack(packed: _Packed) -> LocalBatch:
    """The batch as views of the packed buffer (no copy)."""
    views: dict[str, dict[str, torch.Tensor] | torch.Tensor] = {}
    for name, dtype, shape, offset in packed.layout:
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        tensor = packed.buffer[offset:offset + nbytes].view(dtype).view(shape)
        outer, _, inner = name.partition(".")
        if inner:
            views.setdefault(outer, {})[inner] = tensor  # type: ignore[index]
        else:
            views[outer] = tensor
    batch = Batch(**{k: SequenceBatch(**v) if isinstance(v, dict) else v for k, v in views.items()})
    return LocalBatch(batch, packed.global_size, packed.stand_in)


def _fork_context() -> Any:
    """``fork`` where the platform has it (workers inherit the dataset without pickling it), else the default."""
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def epoch_batches(batches: EpochBatches, start: int = 0, *, workers: int = 0,
                  pin_memory: bool = False) -> Iterator[LocalBatch]:
    """Yield ``batches[start], batches[start + 1], ...`` to the end of the epoch.

    Args:
        workers: 0 builds each batch on the calling thread when it is asked for; ``w > 0`` has ``w`` worker
            processes build up to ``2 w`` batches ahead (the order is kept).
        pin_memory: with workers, page-lock the batches on the DataLoader's pin thread (for an asynchronous
            copy to CUDA); without workers it is ignored (pinning on the training thread would only add a copy).

    Closing the iterator early (``break``) stops the workers.
    """
    if workers == 0:
        for b in range(start, len(batches)):
            yield batches[b]
        return
    loader = DataLoader(batches, batch_size=None, sampler=range(start, len(batches)), num_workers=workers,
                        collate_fn=_pack, pin_memory=pin_memory, prefetch_factor=_PREFETCH,
                        multiprocessing_context=_fork_context())
    iterator = iter(loader)
    try:
        for packed in iterator:
            yield _unpack(packed)
    finally:
        del iterator  # shuts the workers down now, not at the next garbage collection


def auto_loader_workers(num_threads: int, local_world_size: int = 1, device: torch.device | None = None) -> int:
    """The worker count ``train.loader_workers: null`` resolves to.

    CPU: 0, by measurement. On the 2-core development machine (shared with other jobs), a worker made one
    process slower, not faster: 0.87x at L = 500 and 1,000 (``benchmarks/train_scaling.py``; docs/training.md,
    "Throughput"). Building a batch is ~8% of a CPU step (11.6 ms of ~135 ms at L = 1,000, B = 256), receiving
    it from a worker still costs 2.5 ms, and the worker's CPU time is taken from the training thread whenever
    no core is idle. Set ``train.loader_workers: 1`` on a machine with an idle core to spare.
    CUDA: the training thread mostly launches kernels and batch building becomes the CPU's main work: up to
    2 workers per rank, as the cores allow (a choice, not measured: no GPU on the development machine).
    ``num_threads`` is kept for the rule's signature (the torch threads of each rank).
    """
    if device is not None and device.type == "cuda":
        return max(1, min(2, available_cores() // max(1, local_world_size) - 1))
    return 0

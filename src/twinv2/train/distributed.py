"""Multi-process training on PyTorch's own engine: ``torchrun`` starts the processes (ranks), this module
joins them into one process group and shares work and results between them.

What a run of N ranks does (``torchrun --nproc-per-node N -m twinv2 train ...``):

- the process group: ``gloo`` on CPU, ``nccl`` on CUDA (rank r on ``cuda:LOCAL_RANK``), every collective
  bounded by ``train.dist_timeout`` seconds, so a rank that dies or hangs ends the job with a
  :class:`~twinv2.errors.DistributedError` naming the rank instead of a hang;
- the data: every rank derives the same epoch order from (seed, epoch); global batch b is the same
  ``batch_size`` samples as in a one-process run, and rank r trains on its contiguous part of it
  (:func:`shard_bounds`: parts differ by at most one sample, none overlap, none is lost);
- the gradients: ``DistributedDataParallel`` averages them over ranks; the loop scales each rank's summed
  loss by ``N / global batch`` so that the average is the global batch's mean loss whatever the split, and N
  ranks with batch B follow the trajectory of one process with batch B (up to float summation order);
- validation: each rank predicts its part of the samples, :func:`gather_array` joins the predictions in
  sample order, and the metrics (GAUC included) are computed once on the union;
- files: only rank 0 writes (config, checkpoints, history), atomically.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from twinv2.data.split import Samples
from twinv2.errors import DistributedError

__all__ = ["DistContext", "all_sum", "check_same_inputs", "collective_errors", "env_world_size", "evaluate_sharded",
           "gather_array",
           "launch_torchrun", "local_part", "setup_distributed", "shard_bounds", "teardown_distributed"]

# What a failed collective says (gloo: "Connection closed by peer", "Timed out waiting 3000ms ..."; NCCL's
# watchdog and c10d's store errors name themselves).
_COLLECTIVE_FAILURE = re.compile(r"gloo|nccl|c10d|ProcessGroup|timed out|connection (closed|reset|refused)|"
                                 r"closed by peer|broken pipe", re.IGNORECASE)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a run.

    Attributes:
        rank, world_size: this rank and the number of ranks (1 = a plain one-process run).
        local_rank: the rank among the processes of this machine (which GPU it uses).
        local_world_size: processes on this machine (they share its cores).
        backend: ``"gloo"``, ``"nccl"`` or None (one process).
        timeout: seconds a collective waits (``train.dist_timeout``).
        owned: True when :func:`setup_distributed` created the process group (and
            :func:`teardown_distributed` destroys it); False when the caller had created it.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None
    timeout: float = 600.0
    owned: bool = False

    @property
    def enabled(self) -> bool:
        """More than one rank."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints progress."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where tensors handed to collectives live (NCCL takes CUDA tensors only)."""
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


def env_world_size() -> int:
    """``WORLD_SIZE`` as set by ``torchrun`` (1 outside it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_distributed(device: torch.device, timeout: float) -> tuple[DistContext, torch.device]:
    """Join the run's process group (or use the one the caller created) and pick this rank's device.

    Outside ``torchrun`` (``WORLD_SIZE`` unset or 1) and without a process group this is a no-op: one rank.

    Args:
        device: the configured device; ``cuda`` without an index becomes ``cuda:LOCAL_RANK`` in a
            multi-process run.
        timeout: seconds each collective may wait.
    Returns:
        (the context, this rank's device).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        world, rank, owned = dist.get_world_size(), dist.get_rank(), False
        backend = str(dist.get_backend())
    elif env_world_size() > 1:
        if not dist.is_available():  # pragma: no cover - torch builds without distributed support
            raise DistributedError("this torch build has no torch.distributed; run one process")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = _rank_device(device, local_rank)
            torch.cuda.set_device(device)
        kwargs = {"device_id": device} if backend == "nccl" else {}
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout), **kwargs)
        except (RuntimeError, ValueError) as exc:  # rendezvous failed, MASTER_ADDR missing, ...
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DistributedError(f"rank {os.environ.get('RANK', '?')} of {env_world_size()}: could not join the "
                                   f"{backend} process group (start the job with torchrun, which sets RANK, "
                                   f"WORLD_SIZE, MASTER_ADDR and MASTER_PORT): {first}") from exc
        world, rank, owned = dist.get_world_size(), dist.get_rank(), True
    else:
        return DistContext(timeout=timeout), device
    if world > 1 and device.type == "cuda":
        device = _rank_device(device, local_rank)
        torch.cuda.set_device(device)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    ctx = DistContext(rank=rank, world_size=world, local_rank=local_rank, local_world_size=local_world,
                      backend=backend, timeout=timeout, owned=owned)
    return ctx, device


def _rank_device(device: torch.device, local_rank: int) -> torch.device:
    """``cuda`` -> ``cuda:LOCAL_RANK``; an explicit index is kept (the user placed the rank)."""
    return torch.device("cuda", local_rank) if device.index is None else device


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if ctx.owned and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def collective_errors(ctx: DistContext, what: str) -> Iterator[None]:
    """Turn a failed collective inside the block into a :class:`DistributedError` naming this rank.

    Other errors pass through unchanged, and nothing is caught in a one-rank run.
    """
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not ctx.enabled or not (isinstance(exc, dist.DistError) or _COLLECTIVE_FAILURE.search(first)):
            raise
        raise DistributedError(
            f"rank {ctx.rank} of {ctx.world_size}: {what} failed: another rank died or did not answer within "
            f"train.dist_timeout={ctx.timeout:g} s (see the other ranks' output for the cause): {first}") from exc


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of ``n`` that ``rank`` takes: contiguous parts whose sizes differ by at most one,
    the first ``n % world_size`` ranks taking one more. The parts cover ``0..n`` without overlap."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def local_part(index: np.ndarray, rank: int, world_size: int) -> tuple[np.ndarray, bool]:
    """This rank's part of a global batch: int64 ``[B]`` sample indices -> (int64 ``[b]``, stand-in).

    A global batch smaller than the number of ranks (an epoch's last) leaves some ranks without samples; such
    a rank gets the batch's first sample as a stand-in, which the loop weighs 0 (every rank must run a
    backward pass for the gradient collective), so no sample counts twice.
    """
    lo, hi = shard_bounds(len(index), rank, world_size)
    if hi > lo:
        return index[lo:hi], False
    return index[:1], True


def all_sum(values: Sequence[float], ctx: DistContext) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64); the values themselves in a one-rank run."""
    if not ctx.enabled:
        return [float(v) for v in values]
    t = torch.tensor(list(values), dtype=torch.float64, device=ctx.comm_device)
    dist.all_reduce(t)
    return t.cpu().tolist()


def check_same_inputs(description: str, ctx: DistContext) -> None:
    """Fail on every rank unless all ranks hold the same ``description`` (e.g. the dataset identity and the
    sample counts): nodes that read different copies of the data would otherwise train on a mix.

    Raises:
        DistributedError: naming this rank and ``description``'s first line.
    """
    if not ctx.enabled:
        return
    digest = int.from_bytes(hashlib.sha256(description.encode()).digest()[:8], "little", signed=True)
    t = torch.tensor([digest, -digest], dtype=torch.int64, device=ctx.comm_device)
    with collective_errors(ctx, "comparing the ranks' inputs"):
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if int(t[0]) != digest or int(t[1]) != -digest:
        raise DistributedError(f"rank {ctx.rank} of {ctx.world_size}: the ranks read different inputs (this rank: "
                               f"{description.splitlines()[0]}); give every node the same dataset and compressed "
                               "folders (docs/training.md, 'Several machines')")


def gather_array(local: np.ndarray, counts: Sequence[int], ctx: DistContext) -> np.ndarray:
    """Concatenate every rank's ``local`` in rank order: float64 ``[counts[rank]]`` -> ``[sum(counts)]``.

    ``counts`` (known to every rank, e.g. from :func:`shard_bounds`) lets the parts be padded to one length
    for ``all_gather`` and trimmed after.
    """
    if not ctx.enabled:
        return np.asarray(local, dtype=np.float64)
    width = max(1, max(counts))
    padded = torch.zeros(width, dtype=torch.float64, device=ctx.comm_device)
    padded[:len(local)] = torch.from_numpy(np.asarray(local, dtype=np.float64)).to(ctx.comm_device)
    parts = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    return np.concatenate([p[:c].cpu().numpy() for p, c in zip(parts, counts, strict=True)])


def launch_torchrun(nproc: int, args: Sequence[str], *, torchrun_args: Sequence[str] = ()) -> int:
    """Run ``python -m torch.distributed.run --standalone --nproc-per-node nproc [torchrun_args] -m twinv2
    args...`` and return its exit code (what ``twinv2 train --nproc N`` does: one machine, N ranks)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               *torchrun_args, "-m", "twinv2", *args]
    return subprocess.call(command)


def evaluate_sharded(model: torch.nn.Module, builder: Any, samples: Samples, window_start: int, *,
                     batch_size: int, device: torch.device, ctx: DistContext, by_group: bool = True,
                     bucket_len: int | None = None) -> dict[str, Any]:
    """:func:`~twinv2.train.evaluate.evaluate_samples` with the prediction shared over the ranks.

    Each rank predicts its contiguous part of ``samples`` (``[N]``); the parts are gathered in sample order
    and every rank computes the same report on all ``N`` predictions (GAUC of the union, not a mean of
    per-rank GAUCs). In a one-rank run this is ``evaluate_samples`` itself.
    """
    from twinv2.train.evaluate import evaluate_samples, metrics_report, predict

    if not ctx.enabled:
        return evaluate_samples(model, builder, samples, window_start, batch_size=batch_size, device=device,
                                by_group=by_group, bucket_len=bucket_len)
    t0 = time.perf_counter()
    lo, hi = shard_bounds(len(samples), ctx.rank, ctx.world_size)
    local = predict(model, builder, samples.subset(np.arange(lo, hi)), batch_size=batch_size, device=device)
    counts = [b - a for a, b in (shard_bounds(len(samples), r, ctx.world_size) for r in range(ctx.world_size))]
    with collective_errors(ctx, "gathering the validation predictions"):
        probs = gather_array(local, counts, ctx)
    report = metrics_report(builder.dataset, samples, probs, window_start, by_group=by_group,
                            long_len=(bucket_len or builder.config.long_len) if by_group else None)
    report["seconds"] = time.perf_counter() - t0
    return report

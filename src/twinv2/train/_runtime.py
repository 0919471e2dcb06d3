"""Where training and evaluation run: the device and the number of torch threads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from twinv2.errors import ConfigError

__all__ = ["available_cores", "default_num_threads", "resolve_device", "torch_threads"]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU, or a string torch does not
    read as a device, is a :class:`ConfigError`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available (use --device cpu or auto)")
    return device


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_num_threads(local_world_size: int = 1) -> int:
    """Torch intra-op threads used when the config says 0 (auto): every core but one, at least one; with
    ``local_world_size`` training processes on this machine (``torchrun``), each gets its share of the cores
    but one.

    Why not every core: the remaining core builds the next batch (NumPy slicing of the CSR histories) and
    serves the OS. More importantly, intra-op threads that must all be scheduled at once collapse when
    anything else runs on the machine: on the 2-core development machine with one other busy process,
    2 threads trained 13x slower than 1 (73 vs 1,000 samples/s, twinv2 at L = 500), while on an idle
    machine the second thread gains far less than 2x for these memory-bound gathers.
    """
    return max(1, available_cores() // max(1, local_world_size) - 1)


@contextlib.contextmanager
def torch_threads(num_threads: int = 0, local_world_size: int = 1) -> Iterator[int]:
    """Run the block with ``num_threads`` intra-op threads (0 = :func:`default_num_threads` for
    ``local_world_size`` processes on this machine), then restore."""
    previous = torch.get_num_threads()
    n = num_threads or default_num_threads(local_world_size)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(previous)

"""Atomic file and folder writes.

Every output twinv2 writes goes through these helpers: content is written to a temporary sibling, then
renamed into place, so an interrupted job leaves either the old output or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_dir", "atomic_file", "atomic_files", "load_npy", "load_torch_dict", "read_json_object",
           "save_figure_atomic", "save_npy_atomic", "write_json_atomic"]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_file(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False)
        fh.write("\n")


def save_npy_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array in ``.npy`` format atomically."""
    with atomic_file(path, "wb") as fh:
        np.save(fh, array)


@contextlib.contextmanager
def atomic_files(*paths: str | os.PathLike) -> Iterator[list[Path]]:
    """Write several files as one unit: yield one temporary path per target; when the block succeeds,
    rename them all into place, and if any rename fails, put back what was there before.

    Everything that can fail for lack of space or a bad value (writing, flushing) happens in the block, on
    the temporaries; only renames follow, so the targets end up all new or all as before: never a new ids
    file beside an old matrix. (A crash of the machine between two renames is the one gap left.)
    """
    targets = [Path(p) for p in paths]
    for target in targets:
        if target.is_dir():  # never replace a folder by a file
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    tmps: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            tmps.append(Path(tmp))
        yield list(tmps)
        for tmp in tmps:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        backups: list[tuple[Path, Path | None]] = []
        try:
            for target, tmp in zip(targets, tmps, strict=True):
                backup = None
                if target.exists():
                    backup = target.with_name(f".{target.name}.old-{os.getpid()}")
                    os.replace(target, backup)
                backups.append((target, backup))
                os.replace(tmp, target)
        except BaseException:
            for target, backup in reversed(backups):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(target)
                if backup is not None:
                    os.replace(backup, target)
            raise
        for _, backup in backups:
            if backup is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)
    finally:
        for tmp in tmps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` when the block succeeds.

    On any exception the temporary folder is removed and ``path`` is left as it was (absent, or the
    previous complete output). With ``overwrite=False`` an existing ``path`` is an error.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            # Move the old output aside first so the swap is two renames, never a half-deleted folder.
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_figure_atomic(fig: Any, path: str | os.PathLike) -> Path:
    """Lay out a matplotlib figure, write it as PNG to ``path`` atomically, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return path


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """``np.load`` of one ``.npy`` array (no pickles) whose failures name the file.

    Raises:
        DataValidationError: the file is missing, truncated, not in ``.npy`` format or holds objects.
    """
    from twinv2.errors import DataValidationError

    path = Path(path)
    if not path.is_file():
        raise DataValidationError(str(path), None, "an existing .npy file", "no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:  # numpy reports damage as any of these
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataValidationError(str(path), None, "a readable .npy array", reason) from exc
    if not isinstance(array, np.ndarray):
        raise DataValidationError(str(path), None, "one .npy array", type(array).__name__)
    return array


def read_json_object(path: str | os.PathLike, what: str = "a JSON object") -> dict[str, Any]:
    """Read a UTF-8 JSON file that must hold an object; failures name the file.

    Raises:
        DataValidationError: not UTF-8, not valid JSON, or not an object. (A missing file is the caller's
            to report: it knows what the file is for.)
    """
    from twinv2.errors import DataValidationError

    path = Path(path)
    try:
        obj = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataValidationError(str(path), None, "UTF-8 text",
                                  f"the undecodable byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
                                  ) from exc
    except json.JSONDecodeError as exc:
        raise DataValidationError(str(path), None, "valid JSON", str(exc)) from exc
    if not isinstance(obj, dict):
        raise DataValidationError(str(path), None, what, f"a JSON {type(obj).__name__}")
    return obj


def load_torch_dict(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``torch.save``-d dict on the CPU with ``weights_only=True`` (no arbitrary code runs).

    Raises:
        CheckpointError: the file is missing, unreadable, or does not hold a dict.
    """
    import torch

    from twinv2.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (pickle, zip, runtime) for a damaged file
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: not a readable checkpoint (torch.load with weights_only=True: "
                              f"{type(exc).__name__}: {first_line})") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(payload).__name__}")
    return payload

"""Bulk loads: a compression job's output into a new store version, and the first raw behaviors from the logs.

:func:`load_version` stages every user's virtual items under a new version id (the hash of the folder's
``manifest.json``) while the store keeps serving the active version, then swaps the pointer in one step.
On the very first load (a store without any raw behavior) it also copies each user's raw behaviors from
the dataset the job read: those at or after the snapshot, plus ``context`` before it. Later loads take the
raw part from live events only (the offline logs the next job reads contain them already).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.compress.store import MANIFEST_FILE, load_compressed, read_compressed_manifest
from twinv2.data.store import Dataset, load_dataset
from twinv2.errors import ConfigError, DataValidationError
from twinv2.serve.state import RawEvents
from twinv2.serve.store import LifeCycleStore, VersionInfo

__all__ = ["RAW_VERSION", "bootstrap_raw", "compression_version", "latest_compressed", "load_version"]

RAW_VERSION = "raw"  # the version of a store serving a raw-sequence model without compressed clusters
_NO_SNAPSHOT = -(2**62)
_USERS_PER_WRITE = 512


def latest_compressed(path: str | os.PathLike) -> Path:
    """``path`` itself when it is a finished compression folder; else, when it holds several (the offline
    job on a cadence, e.g. ``runs/demo/compressed/snapshot-*``), the finished one with the latest snapshot.

    Raises:
        DataValidationError: neither ``path`` nor any folder directly inside it is a finished compression.
    """
    path = Path(path)
    if (path / MANIFEST_FILE).exists() or not path.is_dir():
        return path
    found = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir() and (p / MANIFEST_FILE).exists()):
        try:
            found.append((int(read_compressed_manifest(sub)["snapshot_ts"]), sub))
        except DataValidationError:
            continue
    if not found:
        read_compressed_manifest(path)  # raises, naming the missing manifest
    return max(found)[1]


def compression_version(path: str | os.PathLike) -> str:
    """The version id of a compressed folder: ``c-`` and 12 hex digits of its manifest's SHA-256."""
    manifest = Path(path) / MANIFEST_FILE
    read_compressed_manifest(path)  # checks the folder is complete
    return "c-" + hashlib.sha256(manifest.read_bytes()).hexdigest()[:12]


def _user_events(ds: Dataset, user: int, snapshot_ts: int, context: int) -> RawEvents:
    h = ds.histories
    lo, hi = int(h.offsets[user]), int(h.offsets[user + 1])
    cut = int(h.end_before(np.array([user]), np.array([snapshot_ts]))[0]) if snapshot_ts > _NO_SNAPSHOT else hi
    start = max(lo, cut - context)
    rows = np.arange(start, hi)
    return RawEvents(h.item_id[rows].astype(np.int64), h.ts[rows].astype(np.int64), h.label[rows].astype(np.int8),
                     {n: h.cross[n][rows].astype(np.float32) for n in h.cross})


def _bootstrap(store: LifeCycleStore, ds: Dataset, snapshot_ts: int, context: int) -> int:
    batch: list[tuple[int, RawEvents]] = []
    total = 0
    for user in range(ds.histories.num_users):
        ev = _user_events(ds, user, snapshot_ts, context)
        total += len(ev)
        batch.append((user, ev))
        if len(batch) >= _USERS_PER_WRITE:
            store.put_bootstrap_events(batch)
            batch = []
    if batch:
        store.put_bootstrap_events(batch)
    return total


def _open_dataset(path: str | os.PathLike, cross_names: list[str]) -> Dataset:
    if not Path(path).exists():
        raise ConfigError(f"--dataset {path}: no such folder (the raw behaviors of the first load come from the "
                          "dataset the compression job read; pass --dataset)")
    ds = load_dataset(path, check_values=False)
    names = [c.name for c in ds.manifest.cross_numerics]
    if names != list(cross_names):
        raise ConfigError(f"--dataset {path}: cross features {names} differ from the model's {cross_names}")
    return ds


def load_version(store: LifeCycleStore, compressed: str | os.PathLike, *, dataset: str | os.PathLike | None = None,
                 bootstrap: bool | None = None) -> VersionInfo:
    """Load a compressed folder as a new store version and activate it (a no-op when it is already active).

    Args:
        store: the target store (its ``context`` says how many events before the snapshot to copy).
        compressed: a finished ``twinv2 compress`` folder, or a folder of them (the latest snapshot is
            loaded: :func:`latest_compressed`).
        dataset: the dataset of the first load's raw behaviors (default: the one the job read).
        bootstrap: copy raw behaviors from the dataset (default: only when the store holds none).
    Returns:
        the active :class:`VersionInfo`.
    """
    compressed = latest_compressed(compressed)
    version = compression_version(compressed)
    active = store.active_version()
    if active is not None and active.version == version:
        return active
    comp = load_compressed(compressed, with_centroids=True)
    snapshot = int(comp.snapshot_ts)
    names = list(comp.manifest["mean_features"])
    for start in range(0, comp.num_users, _USERS_PER_WRITE):
        rows: list[tuple[int, int, dict[str, Any], np.ndarray]] = []
        for user in range(start, min(comp.num_users, start + _USERS_PER_WRITE)):
            a, b = int(comp.offsets[user]), int(comp.offsets[user + 1])
            if a == b:
                continue
            cols = {"rep_item_id": comp.rep_item_id[a:b], "cluster_size": comp.cluster_size[a:b],
                    "completion_group": comp.completion_group[a:b], "first_ts": comp.first_ts[a:b],
                    "last_ts": comp.last_ts[a:b], "mean_ts": comp.mean_ts[a:b],
                    **{f"mean_{n}": comp.means[n][a:b] for n in names}, "mean_sq_dist": comp.mean_sq_dist[a:b]}
            rows.append((user, snapshot, cols, comp.centroids[a:b]))  # type: ignore[index]
        store.put_users(version, rows)
    if bootstrap is None:
        bootstrap = not store.has_events()
    if bootstrap:
        ds = _open_dataset(dataset or comp.manifest["dataset_path"], store.cross_names)
        _bootstrap(store, ds, snapshot, store.context)
    info = VersionInfo(version=version, snapshot_ts=snapshot, source=str(Path(compressed).resolve()))
    store.activate(info)
    return store.active_version() or info


def bootstrap_raw(store: LifeCycleStore, dataset: str | os.PathLike) -> VersionInfo:
    """For a raw-sequence model without compressed clusters: copy each user's ``context`` most recent raw
    behaviors from ``dataset`` (first start only) and activate the ``raw`` version."""
    active = store.active_version()
    if active is not None and active.version == RAW_VERSION:
        return active
    if not store.has_events():
        _bootstrap(store, _open_dataset(dataset, store.cross_names), _NO_SNAPSHOT, store.context)
    info = VersionInfo(version=RAW_VERSION, snapshot_ts=_NO_SNAPSHOT, source=str(Path(dataset).resolve()))
    store.activate(info)
    return store.active_version() or info

"""Inputs of a run shared by training and evaluation: the temporal split of a config and the compressed
life cycles a ``twinv2`` model reads (checked against the dataset and the window they serve)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from twinv2.data.split import TemporalSplit
from twinv2.data.store import Dataset, dataset_identity
from twinv2.errors import CompressionError, ConfigError
from twinv2.train.config import TrainConfig

__all__ = ["CompressedPaths", "make_split", "open_compressed", "open_compressed_versions"]

# One compressed folder, or several versions of the same dataset (the offline job on a cadence).
CompressedPaths = str | os.PathLike | Sequence[str | os.PathLike]


def make_split(dataset: Dataset, config: TrainConfig) -> TemporalSplit:
    """The temporal split of ``dataset`` at the config's event-count fractions."""
    s = config.split
    return TemporalSplit.from_fractions(dataset.histories.ts, snapshot=s.snapshot, valid=s.valid, test=s.test)


def open_compressed(path: str | os.PathLike | None, dataset: Dataset, window_start: int | None, *,
                    model_name: str, window: str = "train") -> Any:
    """Load compressed life cycles for ``dataset`` and check that they belong to it and may be used for
    samples from ``window_start`` on.

    Clusters may only hold behaviors before every sample they serve, so the compression snapshot must not
    be later than ``window_start`` (the start of the train window when training; of the evaluated window
    when evaluating: clusters refreshed at the test start serve the test window without leakage).
    ``window_start=None`` skips that check (a caller that checks versions itself).

    Raises:
        ConfigError: no folder given for a model that reads compressed life cycles.
        CompressionError: the folder was built from another dataset, or its snapshot is later than
            ``window_start``.
    """
    from twinv2.compress import load_compressed
    from twinv2.compress.store import members_per_user

    if path is None:
        raise ConfigError(f"model '{model_name}' reads compressed life cycles: pass --compressed DIR "
                          "(a folder written by `twinv2 compress` for this dataset)")
    comp = load_compressed(path)
    meta = comp.manifest
    # The job records the dataset it read; compare the identity a checkpoint is checked against (the
    # fields the job records), then the strongest cheap check: every user's clusters hold exactly the
    # user's behaviors before the snapshot.
    recorded = dict(meta.get("job", {}).get("dataset", {}))
    recorded.setdefault("fingerprint", meta.get("dataset_fingerprint"))
    recorded.setdefault("num_users", len(comp.offsets) - 1)
    expected = dataset_identity(dataset.manifest)
    differs = [k for k in expected if k in recorded and recorded[k] != expected[k]]
    h = dataset.histories
    if not differs and len(comp.offsets) == h.num_users + 1:
        users = np.arange(h.num_users, dtype=np.int64)
        before = h.end_before(users, np.full(h.num_users, comp.snapshot_ts, dtype=np.int64)) - h.offsets[:-1]
        members = members_per_user(comp)  # [U]
        bad = np.flatnonzero(members != before)
        if bad.size:
            u = int(bad[0])
            raise CompressionError(
                f"{path}: compressed life cycles of another dataset ({meta.get('dataset_path', 'unknown path')}): "
                f"user {u} has {int(before[u])} behaviors before the snapshot in {dataset.path} but its clusters "
                f"hold {int(members[u])} ({bad.size} users differ); rerun `twinv2 compress` on "
                "this dataset")
    if differs:
        key = differs[0]
        raise CompressionError(
            f"{path}: compressed life cycles of another dataset ({meta.get('dataset_path', 'unknown path')}): "
            f"'{key}' is {recorded[key]!r} there and {expected[key]!r} in {dataset.path}; rerun "
            "`twinv2 compress` on this dataset")
    if window_start is not None and comp.snapshot_ts > window_start:
        raise CompressionError(
            f"{path}: compression snapshot {comp.snapshot_ts} is after the start of the {window} window "
            f"{window_start}: its clusters would hold behaviors later than the first {window} samples; compress "
            f"with --snapshot-ts <= {window_start}")
    return comp


def open_compressed_versions(paths: CompressedPaths | None, dataset: Dataset, window_start: int, *,
                             model_name: str, window: str = "train") -> list[Any]:
    """:func:`open_compressed` for one folder or several versions (the offline job on a cadence).

    Each version is checked against ``dataset``; the earliest snapshot must be at or before
    ``window_start`` (every sample then has a version built strictly before it: the batch builder picks,
    per sample, the latest version whose snapshot is at or before the sample's time).
    Returns the versions sorted by snapshot.
    """
    if paths is None or isinstance(paths, (str, os.PathLike)):
        return [open_compressed(paths, dataset, window_start, model_name=model_name, window=window)]
    if len(paths) == 0:
        return [open_compressed(None, dataset, window_start, model_name=model_name, window=window)]
    # Only the earliest version must precede the window (checked below); later ones serve later samples.
    versions = [open_compressed(p, dataset, None, model_name=model_name, window=window) for p in paths]
    versions.sort(key=lambda c: c.snapshot_ts)
    first = versions[0]
    if first.snapshot_ts > window_start:
        raise CompressionError(
            f"compressed versions {[str(p) for p in paths]}: the earliest snapshot {first.snapshot_ts} is after the "
            f"start of the {window} window {window_start}: the first {window} samples would have no clusters built "
            f"before them; add a version with --snapshot-ts <= {window_start}")
    return versions

"""The offline job on a cadence: compressed versions of one dataset at several snapshots.

In production the compression job reruns on a schedule (say daily) and serving reads the latest version, so
a request sees the raw behaviors since that version's snapshot followed by its virtual items. Training and
evaluation reproduce this by passing every version to the batch builder, which gives each sample the latest
version built strictly before it (no leakage: a version only holds behaviors before its snapshot). Without a
cadence, a train sample late in the window sees a long raw tail and old clusters, while a test sample right
after a refresh sees mostly virtual items: the two mixes differ.

Example:
    >>> snaps = cadence_snapshots(dataset.histories.ts, 0.8, 1.0, 8)  # doctest: +SKIP
    >>> folders = compress_on_cadence("data/synth", "data/synth-c", snaps, workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.compress.job import compress_dataset
from twinv2.errors import ConfigError

__all__ = ["cadence_snapshots", "compress_on_cadence", "version_folder"]


def cadence_snapshots(ts: np.ndarray, start: float, stop: float, versions: int) -> list[int]:
    """``versions`` snapshot times at evenly spaced event-count fractions in ``[start, stop)``.

    The first is at fraction ``start`` (e.g. the split snapshot); the spacing is ``(stop - start) /
    versions`` of the events, so with ``start = 0.8, stop = 1.0, versions = 8`` the job "runs" after every
    2.5% of the events. Duplicate times (tie-heavy data) are dropped.

    Args:
        ts: int64 ``[E]`` event timestamps.
        start, stop: fractions with ``0 <= start < stop <= 1``; versions: >= 1.
    Returns:
        Sorted distinct snapshot times (seconds).
    """
    if not 0.0 <= start < stop <= 1.0:
        raise ConfigError(f"cadence: fractions must satisfy 0 <= start < stop <= 1, got {start}, {stop}")
    if isinstance(versions, bool) or int(versions) < 1:
        raise ConfigError(f"cadence: versions={versions!r} should be an integer >= 1")
    if len(ts) == 0:
        raise ConfigError("cadence: no events to place snapshots in")
    fractions = start + (stop - start) * np.arange(int(versions)) / int(versions)
    return sorted({int(t) for t in np.quantile(ts, fractions, method="lower")})


def version_folder(root: str | os.PathLike, snapshot_ts: int) -> Path:
    """The folder of the version at ``snapshot_ts`` under ``root``: ``root/snapshot-<ts>``."""
    return Path(root) / f"snapshot-{int(snapshot_ts)}"


def compress_on_cadence(dataset: str | os.PathLike, root: str | os.PathLike, snapshots: list[int],
                        **kwargs: Any) -> list[Path]:
    """Run :func:`~twinv2.compress.compress_dataset` once per snapshot into ``root/snapshot-<ts>``.

    Each run is resumable and skipped when already finished with the same parameters (the job's own
    resumption), so an interrupted cadence can be rerun. ``kwargs`` go to ``compress_dataset``
    (embeddings, config — e.g. ``ClusterConfig(split_by="category_id")`` for every version —, workers, seed,
    progress...). Returns the version folders in snapshot order.
    """
    folders = []
    for ts in sorted(snapshots):
        folder = version_folder(root, ts)
        compress_dataset(dataset, folder, ts, **kwargs)
        folders.append(folder)
    return folders

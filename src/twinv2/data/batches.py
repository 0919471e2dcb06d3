"""Typed batches sliced from CSR histories at batch time (never stored padded per sample).

Sequences are **most recent first**: position 0 holds the latest behavior before the sample's time, padding
sits at the end (``mask`` False, ``item_id`` 0, ``size`` 0). So "the most recent k" is ``[:, :k]`` for
every row.

The long sequence is either the L most recent raw behaviors (``long_source="raw"``, TWIN and the baselines)
or, for TWIN-V2 (``long_source="compressed"``), the raw behaviors between the compression snapshot and the
sample time as size-1 items (at most ``SequenceConfig.raw_cap`` of them, the most recent) followed by the
user's virtual items (clusters built before the snapshot), most recent first, L in all. Given several
compressed versions (the offline job on a cadence), each sample reads the latest one whose snapshot is at
or before its time.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from twinv2.data.split import Samples
from twinv2.data.store import Dataset
from twinv2.errors import ConfigError, DataValidationError

__all__ = ["Batch", "BatchBuilder", "CompressedSequences", "SequenceBatch", "SequenceConfig",
           "sequence_feature_names"]


@runtime_checkable
class CompressedSequences(Protocol):
    """What the batch builder reads from one version of compressed life cycles: the virtual items of every
    user in CSR form. ``twinv2.compress.CompressedLifeCycles`` (what ``load_compressed`` returns) has these
    attributes; ``data/`` names only this interface, so it never imports the compression layer above it.

    Attributes (read-only here), with ``U`` users and ``C`` clusters:
        offsets: int64 ``[U + 1]``; user ``u``'s clusters are rows ``offsets[u]:offsets[u + 1]``, oldest first.
        rep_item_id: int64 ``[C]`` the representative item; cluster_size: int ``[C]`` members n.
        mean_ts: float64 ``[C]`` mean member timestamp (the virtual item's time for ``time_gap``).
        means: float ``[C]`` per cross feature and ``label``, keyed by feature name (cluster means).
        snapshot_ts: the clusters hold behaviors strictly before this time.
    """

    @property
    def offsets(self) -> np.ndarray: ...

    @property
    def rep_item_id(self) -> np.ndarray: ...

    @property
    def cluster_size(self) -> np.ndarray: ...

    @property
    def mean_ts(self) -> np.ndarray: ...

    @property
    def means(self) -> Mapping[str, np.ndarray]: ...

    @property
    def snapshot_ts(self) -> int: ...


def sequence_feature_names(manifest) -> list[str]:
    """Per-behavior numeric channels of ``SequenceBatch.cross``: the manifest's cross numerics, then
    ``label`` (the behavior's own engagement) and ``time_gap`` (seconds from the behavior to the request)."""
    return [c.name for c in manifest.cross_numerics] + ["label", "time_gap"]


@dataclass
class SequenceBatch:
    """One behavior sequence per sample.

    Attributes:
        item_id: int64 ``[B, L]`` item ids (virtual items carry their representative item); 0 = padding.
        cross: float32 ``[B, L, J]`` raw numeric channels named by :func:`sequence_feature_names`.
        size: float32 ``[B, L]`` cluster sizes n (1 for a raw behavior, 0 for padding).
        mask: bool ``[B, L]`` True where a real behavior or cluster sits.
        virtual: bool ``[B, L]`` True where a virtual item (cluster) sits, for compressed sequences;
            None for raw ones. Models do not read it (``size`` is what the score uses); diagnostics do.
    """

    item_id: torch.Tensor
    cross: torch.Tensor
    size: torch.Tensor
    mask: torch.Tensor
    virtual: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> SequenceBatch:
        return SequenceBatch(*(None if getattr(self, f.name) is None else
                               getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)))


@dataclass
class Batch:
    """A batch of samples with their sequences.

    Attributes:
        user_id, ts, target_item: int64 ``[B]``; label: float32 ``[B]``.
        history_length: int64 ``[B]`` raw behaviors before ``ts`` (for activity groups).
        long: the long-term sequence ``[B, L]``; short: the last ``S`` raw behaviors ``[B, S]``.
    """

    user_id: torch.Tensor
    ts: torch.Tensor
    target_item: torch.Tensor
    label: torch.Tensor
    history_length: torch.Tensor
    long: SequenceBatch
    short: SequenceBatch

    def __len__(self) -> int:
        return int(self.user_id.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self)}
        return Batch(**moved)


@dataclass(frozen=True)
class SequenceConfig:
    """How sequences are cut. ``long_len`` is the GSU input length L shared by all two-stage models."""

    long_len: int = 1000
    short_len: int = 50
    long_source: str = "raw"  # "raw" | "compressed"
    # TWIN-V2: at most this many raw behaviors since the snapshot lead the long sequence; virtual items
    # fill the rest of L. None = no cap (raw first until L is full).
    raw_cap: int | None = None

    def __post_init__(self) -> None:
        if self.long_len < 1 or self.short_len < 1:
            raise ConfigError(f"long_len and short_len must be >= 1, got {self.long_len}, {self.short_len}")
        if self.raw_cap is not None and (isinstance(self.raw_cap, bool) or self.raw_cap < 0):
            raise ConfigError(f"raw_cap must be null or an integer >= 0, got {self.raw_cap!r}")
        if self.long_source not in ("raw", "compressed"):
            raise ConfigError(f"long_source must be 'raw' or 'compressed', got {self.long_source!r}")


class BatchBuilder:
    """Builds :class:`Batch` objects for samples by slicing the dataset's CSR histories.

    Example:
        >>> builder = BatchBuilder(dataset, SequenceConfig(long_len=1000))  # doctest: +SKIP
        >>> for batch in builder.batches(samples, batch_size=256, shuffle=True, seed=0): ...  # doctest: +SKIP
    """

    def __init__(self, dataset: Dataset, config: SequenceConfig,
                 compressed: CompressedSequences | Sequence[CompressedSequences] | None = None):
        versions = [] if compressed is None else (
            [compressed] if not isinstance(compressed, (list, tuple)) else list(compressed))
        if config.long_source == "compressed" and not versions:
            raise ConfigError("long_source='compressed' needs a compressed life-cycle folder (--compressed)")
        for c in versions:
            if len(c.offsets) != dataset.histories.num_users + 1:
                raise DataValidationError("user_offsets.npy", None,
                                          f"compressed life cycles for {dataset.histories.num_users} users",
                                          f"{len(c.offsets) - 1}")
        # Several versions = the offline job run on a cadence: each sample reads the latest version whose
        # snapshot is at or before its time, as it would have been served then.
        versions.sort(key=lambda c: c.snapshot_ts)
        if len({c.snapshot_ts for c in versions}) != len(versions):
            raise ConfigError("compressed life cycles: two versions share a snapshot time "
                              f"({[c.snapshot_ts for c in versions]}); pass each snapshot once")
        self.dataset, self.config, self.versions = dataset, config, versions
        self.compressed = versions[-1] if versions else None  # the latest version
        self.feature_names = sequence_feature_names(dataset.manifest)
        h = dataset.histories
        # Raw per-event channels, stacked once: float32 [E, J-1] (time_gap is computed per request).
        self._event_channels = np.stack([h.cross[c.name] for c in dataset.manifest.cross_numerics]
                                        + [h.label.astype(np.float32)], axis=1)
        if versions:
            names = [c.name for c in dataset.manifest.cross_numerics] + ["label"]
            for c in versions:
                missing = [n for n in names if n not in c.means]
                if missing:
                    raise DataValidationError("compressed clusters", f"mean_{missing[0]}",
                                              "a mean for every cross feature of the dataset")
            # Raw events and the virtual items of every version in one table each (rows 0..E-1 raw, then
            # each version's clusters), so a compressed sequence is one gather per array instead of a select
            # over several sources. Version v's cluster rows start at _num_events + _version_base[v].
            self._num_events = len(h.item_id)
            self._snapshots = np.array([c.snapshot_ts for c in versions], np.int64)  # [V]
            sizes = [len(c.rep_item_id) for c in versions]
            self._version_base = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)  # [V]
            self._version_offsets = np.stack([np.asarray(c.offsets, np.int64) for c in versions])  # [V, U + 1]
            self._mixed_item = np.concatenate([h.item_id] + [c.rep_item_id for c in versions]).astype(np.int64)
            self._mixed_size = np.concatenate([np.ones(len(h.item_id), np.float32)]
                                              + [c.cluster_size.astype(np.float32) for c in versions])
            self._mixed_ts = np.concatenate([h.ts.astype(np.float64)]
                                            + [c.mean_ts.astype(np.float64) for c in versions])
            self._mixed_channels = np.concatenate(
                [self._event_channels]
                + [np.stack([c.means[n] for n in names], axis=1).astype(np.float32) for c in versions])

    # -- slicing -------------------------------------------------------------------------------------
    def _raw_rows(self, lo: np.ndarray, end: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``end-1, end-2, ...`` down to ``lo`` as ``[B, length]`` indices and a validity mask."""
        rows = end[:, None] - 1 - np.arange(length, dtype=np.int64)[None, :]
        valid = rows >= lo[:, None]
        return np.where(valid, rows, 0), valid

    def _sequence_from_rows(self, rows: np.ndarray, valid: np.ndarray, ts: np.ndarray) -> SequenceBatch:
        h = self.dataset.histories
        item = np.where(valid, h.item_id[rows], 0)
        gap = np.where(valid, (ts[:, None] - h.ts[rows]).astype(np.float32), 0.0)
        cross = np.concatenate([self._event_channels[rows], gap[..., None]], axis=2)
        cross[~valid] = 0.0
        return SequenceBatch(torch.from_numpy(item), torch.from_numpy(cross),
                             torch.from_numpy(valid.astype(np.float32)), torch.from_numpy(valid))

    def _compressed_sequence(self, users: np.ndarray, ts: np.ndarray, user_lo: np.ndarray,
                             end: np.ndarray) -> SequenceBatch:
        L = self.config.long_len
        h = self.dataset.histories
        version = np.searchsorted(self._snapshots, ts, side="right") - 1  # [B] latest snapshot <= ts
        if (version < 0).any():
            raise DataValidationError("samples", "ts", f"sample times at or after the compression snapshot "
                                      f"{int(self._snapshots[0])} (clusters would leak later behaviors)",
                                      f"earliest sample at {int(ts.min())}")
        snapshot_end = h.end_before(users, self._snapshots[version])
        raw_lo = np.maximum(user_lo, snapshot_end)
        cap = L if self.config.raw_cap is None else min(self.config.raw_cap, L)
        num_raw = np.minimum(end - raw_lo, cap)                        # [B] raw behaviors in [S, t), capped
        c_lo = self._version_offsets[version, users] + self._version_base[version]
        c_hi = self._version_offsets[version, users + 1] + self._version_base[version]
        num_clusters = np.minimum(c_hi - c_lo, L - num_raw)  # [B] virtual items that fit
        pos = np.arange(L, dtype=np.int64)[None, :]                    # [1, L]
        is_raw = pos < num_raw[:, None]
        mask = pos < (num_raw + num_clusters)[:, None]
        # Row in the mixed tables: raw event end-1-pos, or cluster c_hi-1-(pos-num_raw) shifted past the events.
        rows = np.where(is_raw, end[:, None] - 1 - pos, self._num_events + c_hi[:, None] - 1 - (pos - num_raw[:, None]))
        rows = np.where(mask, rows, 0)
        item = np.where(mask, self._mixed_item[rows], 0)
        size = np.where(mask, self._mixed_size[rows], 0.0).astype(np.float32)
        gap = np.where(mask, ts[:, None] - self._mixed_ts[rows], 0.0).astype(np.float32)
        cross = np.concatenate([self._mixed_channels[rows], gap[..., None]], axis=2)
        cross[~mask] = 0.0
        return SequenceBatch(torch.from_numpy(item), torch.from_numpy(cross), torch.from_numpy(size),
                             torch.from_numpy(mask), torch.from_numpy(mask & ~is_raw))

    def build(self, samples: Samples, index: np.ndarray | None = None) -> Batch:
        """The batch of ``samples[index]`` (all samples when ``index`` is None)."""
        s = samples if index is None else samples.subset(index)
        h = self.dataset.histories
        users, ts = s.user_id.astype(np.int64), s.ts.astype(np.int64)
        user_lo = h.offsets[users]
        end = h.end_before(users, ts)  # strict: rows < end all have timestamp < ts
        if self.config.long_source == "compressed":
            long = self._compressed_sequence(users, ts, user_lo, end)
        else:
            long = self._sequence_from_rows(*self._raw_rows(user_lo, end, self.config.long_len), ts)
        if self.config.long_source == "raw" and self.config.short_len <= self.config.long_len:
            # Both are most recent first from the same boundary: the short sequence is a prefix of the long.
            S = self.config.short_len
            short = SequenceBatch(long.item_id[:, :S], long.cross[:, :S], long.size[:, :S], long.mask[:, :S])
        else:
            short = self._sequence_from_rows(*self._raw_rows(user_lo, end, self.config.short_len), ts)
        return Batch(
            user_id=torch.from_numpy(users), ts=torch.from_numpy(ts),
            target_item=torch.from_numpy(s.item_id.astype(np.int64)),
            label=torch.from_numpy(s.label.astype(np.float32)),
            history_length=torch.from_numpy(end - user_lo), long=long, short=short,
        )

    def batches(self, samples: Samples, batch_size: int, *, shuffle: bool = False,
                seed: int | np.random.Generator = 0) -> Iterator[Batch]:
        """Yield batches of ``batch_size`` samples (the last may be smaller), shuffled if asked."""
        order = np.arange(len(samples))
        if shuffle:
            np.random.default_rng(seed).shuffle(order)
        for start in range(0, len(order), batch_size):
            yield self.build(samples, order[start:start + batch_size])

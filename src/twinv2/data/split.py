"""The temporal protocol: snapshot time, train / valid / test windows, and training samples.

A sample is one event inside a window: (user, ts, target item, label). Its sequences are NOT stored:
they are sliced from the CSR histories at batch time with the strict ``ts < t`` rule
(:meth:`twinv2.data.store.Histories.end_before`), so no sequence ever holds a behavior at or after the
sample's own time.

Time axis::

    time_min ......... snapshot_ts ..... valid_start_ts ..... test_start_ts ..... time_max
    [ history only    )[ train samples  )[ valid samples      )[ test samples      ]

Clusters of the life cycle are built from behaviors strictly before ``snapshot_ts``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from twinv2.data.store import Dataset
from twinv2.errors import ConfigError, DataValidationError

__all__ = ["SPLITS", "Samples", "TemporalSplit", "make_samples"]

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class TemporalSplit:
    """Window boundaries in seconds; ``[snapshot, valid_start)`` trains, ``[test_start, end]`` tests."""

    snapshot_ts: int
    valid_start_ts: int
    test_start_ts: int
    end_ts: int

    def __post_init__(self) -> None:
        if not self.snapshot_ts < self.valid_start_ts < self.test_start_ts <= self.end_ts:
            raise ConfigError(
                "split boundaries must satisfy snapshot_ts < valid_start_ts < test_start_ts <= end_ts, got "
                f"{self.snapshot_ts}, {self.valid_start_ts}, {self.test_start_ts}, {self.end_ts}")

    @classmethod
    def from_fractions(cls, ts: np.ndarray, snapshot: float = 0.8, valid: float = 0.9,
                       test: float = 0.95) -> TemporalSplit:
        """Place the boundaries at event-count quantiles of ``ts`` (int64 ``[E]``).

        The defaults keep 80% of all events as pre-snapshot history, then 10% train, 5% valid, 5% test.
        """
        if not 0.0 < snapshot < valid < test < 1.0:
            raise ConfigError(f"split fractions must satisfy 0 < snapshot < valid < test < 1, got "
                              f"{snapshot}, {valid}, {test}")
        if len(ts) == 0:
            raise DataValidationError("events.parquet", "ts", "at least one event to split", "none")
        q = np.quantile(ts, [snapshot, valid, test], method="lower").astype(np.int64)
        end = int(ts.max())
        # Quantiles can coincide on tie-heavy data; nudge forward so every window is non-empty in time.
        s, v, t = int(q[0]), max(int(q[1]), int(q[0]) + 1), max(int(q[2]), max(int(q[1]), int(q[0]) + 1) + 1)
        return cls(s, v, t, max(end, t))

    def window(self, name: str) -> tuple[int, int]:
        """Half-open ``[lo, hi)`` bounds of window ``name`` ('train', 'valid' or 'test')."""
        if name == "train":
            return self.snapshot_ts, self.valid_start_ts
        if name == "valid":
            return self.valid_start_ts, self.test_start_ts
        if name == "test":
            return self.test_start_ts, self.end_ts + 1
        raise ConfigError(f"unknown split {name!r}; expected one of {SPLITS}")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class Samples:
    """Training or evaluation samples, one per event in a window (arrays of equal length ``N``).

    Attributes:
        user_id, ts, item_id: int64 ``[N]``; label: int8 ``[N]``.
        event_row: int64 ``[N]`` row of the event in the dataset's CSR arrays.
    """

    user_id: np.ndarray
    ts: np.ndarray
    item_id: np.ndarray
    label: np.ndarray
    event_row: np.ndarray

    def __len__(self) -> int:
        return len(self.user_id)

    def subset(self, index: np.ndarray) -> Samples:
        """The samples at ``index`` (int array or boolean mask), as a new ``Samples``."""
        return Samples(self.user_id[index], self.ts[index], self.item_id[index], self.label[index],
                       self.event_row[index])


def make_samples(dataset: Dataset, split: TemporalSplit, name: str, *, max_samples: int | None = None,
                 seed: int | np.random.Generator = 0) -> Samples:
    """All events of window ``name`` as samples, optionally a seeded uniform subsample of ``max_samples``.

    Subsampling keeps the original time order of the kept rows. Raises ``DataValidationError`` when the
    window holds no events (an empty split cannot be trained or evaluated).
    """
    lo, hi = split.window(name)
    h = dataset.histories
    rows = np.flatnonzero((h.ts >= lo) & (h.ts < hi))
    if rows.size == 0:
        raise DataValidationError(str(dataset.path / "events.parquet"), "ts",
                                  f"events in the {name} window [{lo}, {hi})", "none")
    if max_samples is not None and rows.size > max_samples:
        rng = np.random.default_rng(seed)
        rows = np.sort(rng.choice(rows, size=max_samples, replace=False))
    users = np.repeat(np.arange(h.num_users, dtype=np.int64), h.lengths())[rows]
    return Samples(user_id=users, ts=h.ts[rows], item_id=h.item_id[rows], label=h.label[rows], event_row=rows)

"""Life-cycle headroom: how far back a clicked target's previous behavior of the same category lies.

Before any model is trained, this statistic says whether a life-cycle model can gain over a model that
reads only the most recent ``L`` behaviors. For every positive event (``label == 1``) of a time window,
take the user's history strictly before the event's timestamp (the same no-leakage rule as the model
sequences, :meth:`twinv2.data.store.Histories.end_before`: ties excluded, clicked and unclicked behaviors
counted alike) and find the user's most recent behavior whose item has the target's category. Its
*distance* is how many behaviors back it lies (1 = the last behavior before the request). The shares of
positives whose previous same-category behavior lies within 50, within ``L``, beyond ``L``, beyond
``10 L`` or nowhere in the history describe the headroom: a positive beyond ``L`` carries category evidence
that only a life-cycle model can see.

Per evaluated sample (clicked or not), :func:`sample_headroom_buckets` puts the same distance into one of
the exclusive :data:`SAMPLE_BUCKETS`, so that a model's AUC/GAUC can be read on the samples where the life
cycle could pay (``beyond_L``) apart from the others (``twinv2.train.evaluate.metrics_report``).

Example:
    >>> from twinv2.data.store import load_dataset
    >>> from twinv2.data.headroom import life_cycle_headroom
    >>> h = life_cycle_headroom(load_dataset("data/synth"), long_len=500)  # doctest: +SKIP
    >>> h["shares"]["beyond_L"]  # doctest: +SKIP
    0.08
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from twinv2.data.schema import MANIFEST_NAME, Manifest
from twinv2.data.split import Samples, TemporalSplit
from twinv2.data.store import Dataset
from twinv2.errors import ConfigError, DataValidationError

__all__ = ["HEADROOM_BUCKETS", "SAMPLE_BUCKETS", "SHORT_LEN", "SampleBuckets", "bucket_of_distance",
           "default_category_column", "life_cycle_headroom", "previous_same_category_distance",
           "sample_headroom_buckets"]

SHORT_LEN = 50  # the "within 50" bucket: about the length of a short-term sequence
HEADROOM_BUCKETS = ("within_50", "within_L", "beyond_L", "beyond_10L", "never")
# Exclusive per-sample buckets (index = the code of :func:`bucket_of_distance`).
SAMPLE_BUCKETS = ("within_50", "within_L", "beyond_L", "never")
_NEVER = -1


def default_category_column(manifest: Manifest) -> str:
    """The item column the headroom compares: ``category_id`` if declared, else the first inherent categorical.

    Raises:
        DataValidationError: the manifest declares no inherent categorical item column.
    """
    names = [c.name for c in manifest.item_categoricals]
    if "category_id" in names:
        return "category_id"
    if not names:
        raise DataValidationError(MANIFEST_NAME, None,
                                  "an inherent categorical item column (e.g. category_id) for the life-cycle "
                                  "headroom", "none declared")
    return names[0]


def previous_same_category_distance(offsets: np.ndarray, event_category: np.ndarray, rows: np.ndarray,
                                    ends: np.ndarray) -> np.ndarray:
    """Distance, in behaviors, from each query to the user's previous behavior of the query's category.

    No input validation: the caller guarantees CSR ``offsets`` int64 ``[U + 1]``, per-event categories
    int64 ``[E]`` (0 = unknown), query ``rows`` int64 ``[Q]`` (the target events) and ``ends`` int64 ``[Q]``
    with ``offsets[u] <= ends[q] <= rows[q]`` for the user ``u`` owning ``rows[q]``: the history of query
    ``q`` is rows ``offsets[u]:ends[q]``.

    Returns:
        int64 ``[Q]``: ``ends[q] - r`` for the largest ``r < ends[q]`` in the user's rows whose category
        equals ``event_category[rows[q]]``, or ``-1`` when there is none (or the target's category is 0).
    """
    E = len(event_category)
    if E == 0 or len(rows) == 0:
        return np.full(len(rows), _NEVER, np.int64)
    # The search key is code * E + row; codes are made dense first if that could overflow int64.
    if (int(event_category.max()) + 1) * E < (1 << 62):
        codes, dense = None, event_category.astype(np.int64, copy=False)
    else:
        codes, inverse = np.unique(event_category, return_inverse=True)
        dense = inverse.astype(np.int64).reshape(-1)
    order = np.argsort(dense, kind="stable")  # rows grouped by category, increasing row within a category
    key = dense[order] * E + order  # int64 [E], sorted
    target = dense[rows]
    # The last key below (target, end) is the latest row of that category before `end`, any user.
    idx = np.searchsorted(key, target * E + ends, side="left") - 1
    found = idx >= 0
    prev = np.where(found, order[np.maximum(idx, 0)], 0)
    users = np.searchsorted(offsets, rows, side="right") - 1
    found &= (dense[prev] == target) & (prev >= offsets[users])  # same category, same user
    found &= (target if codes is None else codes[target]) != 0  # an unknown category matches nothing
    return np.where(found, ends - prev, _NEVER).astype(np.int64)


def life_cycle_headroom(dataset: Dataset, start_ts: int | None = None, end_ts: int | None = None,
                        long_len: int = 500, category: str | None = None) -> dict[str, Any]:
    """The life-cycle headroom of the positives in ``[start_ts, end_ts)`` for a long sequence of ``long_len``.

    The default window is the test window of the default temporal split
    (:meth:`TemporalSplit.from_fractions` with its default fractions 0.8 / 0.9 / 0.95: the last 5% of events
    by time); give both bounds (unix seconds) to set another. Positives whose target item has the unknown
    category 0 are left out and counted in ``unknown_category``.

    Args:
        dataset: a loaded dataset.
        start_ts, end_ts: the window, half-open; both or neither.
        long_len: ``L``, the long-sequence length the shares are measured against (>= 1).
        category: the inherent categorical item column to compare (default :func:`default_category_column`).
    Returns:
        A JSON-ready dict: ``category``, ``long_len``, ``short_len`` (50), ``window`` (``start_ts``,
        ``end_ts``, ``source``), ``positives`` (with a known category), ``unknown_category``,
        ``counts`` and ``shares`` keyed by ``within_50``, ``within_L``, ``beyond_L``, ``beyond_10L``,
        ``never`` (``within_L + beyond_L + never = 1``; shares are ``None`` without positives), and
        ``median_distance`` of the positives that have a previous same-category behavior (``None`` if none).
    Raises:
        ConfigError: bad ``long_len``, window or ``category``.
        DataValidationError: the dataset declares no inherent categorical column.
    """
    m, h = dataset.manifest, dataset.histories
    if isinstance(long_len, bool) or int(long_len) < 1:
        raise ConfigError(f"headroom: long_len={long_len!r} should be an integer >= 1")
    long_len = int(long_len)
    if category is None:
        category = default_category_column(m)
    elif category not in {c.name for c in m.item_categoricals}:
        raise ConfigError(f"headroom: category={category!r} should be one of the dataset's inherent categorical "
                          f"columns {[c.name for c in m.item_categoricals]}")
    if (start_ts is None) != (end_ts is None):
        raise ConfigError(f"headroom: give both start_ts and end_ts or neither, got {start_ts}, {end_ts}")
    if start_ts is None or end_ts is None:
        if len(h.ts) == 0:
            raise DataValidationError(str(dataset.path / "events.parquet"), "ts", "at least one event", "none")
        start_ts, end_ts = TemporalSplit.from_fractions(h.ts).window("test")
        source = "test window of the default temporal split (fractions 0.8 / 0.9 / 0.95)"
    else:
        source = "given"
    start_ts, end_ts = int(start_ts), int(end_ts)
    if start_ts >= end_ts:
        raise ConfigError(f"headroom: start_ts={start_ts} should be < end_ts={end_ts}")

    event_category = dataset.items[category].astype(np.int64)[h.item_id]  # [E]
    rows = np.flatnonzero((h.label == 1) & (h.ts >= start_ts) & (h.ts < end_ts))
    known = event_category[rows] != 0
    unknown = int((~known).sum())
    rows = rows[known]
    users = np.searchsorted(h.offsets, rows, side="right") - 1
    ends = h.end_before(users, h.ts[rows])
    dist = previous_same_category_distance(h.offsets, event_category, rows, ends)

    found = dist > 0
    counts = {
        "within_50": int((found & (dist <= SHORT_LEN)).sum()),
        "within_L": int((found & (dist <= long_len)).sum()),
        "beyond_L": int((dist > long_len).sum()),
        "beyond_10L": int((dist > 10 * long_len).sum()),
        "never": int((~found).sum()),
    }
    n = len(rows)
    return {
        "category": category,
        "long_len": long_len,
        "short_len": SHORT_LEN,
        "window": {"start_ts": start_ts, "end_ts": end_ts, "source": source},
        "positives": n,
        "unknown_category": unknown,
        "counts": counts,
        "shares": {k: (v / n if n else None) for k, v in counts.items()},
        "median_distance": float(np.median(dist[found])) if found.any() else None,
    }


@dataclass(frozen=True)
class SampleBuckets:
    """The headroom bucket of every evaluated sample.

    Attributes:
        bucket: int8 ``[N]``, index into :data:`SAMPLE_BUCKETS`.
        distance: int64 ``[N]``, behaviors back to the user's previous behavior of the target's category
            (1 = the last behavior before the sample), ``-1`` for none.
        category: the item column compared; long_len: the ``L`` of the ``within_L`` / ``beyond_L`` bounds.
    """

    bucket: np.ndarray
    distance: np.ndarray
    category: str
    long_len: int

    def definition(self) -> dict[str, Any]:
        """JSON-ready description of the buckets (category, L, bounds)."""
        short = min(SHORT_LEN, self.long_len)
        return {"category": self.category, "long_len": self.long_len, "short_len": SHORT_LEN,
                "bounds": {"within_50": f"1..{short}",
                           "within_L": f"{short + 1}..{self.long_len}" if self.long_len > short else "none (L <= 50)",
                           "beyond_L": f">{self.long_len}", "never": "none (or unknown category)"}}


def bucket_of_distance(distance: np.ndarray, long_len: int) -> np.ndarray:
    """Exclusive headroom bucket of each distance: int64 ``[Q]`` (-1 = none) -> int8 ``[Q]``.

    Codes index :data:`SAMPLE_BUCKETS`: 0 ``within_50`` (``1 <= d <= min(50, L)``), 1 ``within_L``
    (``min(50, L) < d <= L``; empty when ``L <= 50``), 2 ``beyond_L`` (``d > L``), 3 ``never`` (``d < 1``).
    """
    d = np.asarray(distance, dtype=np.int64)
    short = min(SHORT_LEN, int(long_len))
    out = np.full(d.shape, 3, dtype=np.int8)
    out[(d >= 1) & (d <= short)] = 0
    out[(d > short) & (d <= long_len)] = 1
    out[d > long_len] = 2
    return out


def sample_headroom_buckets(dataset: Dataset, samples: Samples, long_len: int,
                            category: str | None = None) -> SampleBuckets:
    """The headroom bucket of each sample (clicked or not), for per-bucket metrics and diagnostics.

    The distance is counted in the user's raw behaviors strictly before the sample's timestamp (ties
    excluded, as in every model sequence), back to the most recent one whose item has the target item's
    category; see :func:`bucket_of_distance` for the buckets. A target of unknown category (code 0) has no
    match and lands in ``never``.

    Args:
        dataset: the loaded dataset; samples: ``N`` samples of it (``event_row`` gives each target event).
        long_len: ``L``, the GSU input length of the run.
        category: the inherent categorical item column (default :func:`default_category_column`).
    Raises:
        ConfigError: bad ``long_len`` or ``category``; DataValidationError: no inherent categorical column.
    """
    if isinstance(long_len, bool) or int(long_len) < 1:
        raise ConfigError(f"headroom buckets: long_len={long_len!r} should be an integer >= 1")
    m, h = dataset.manifest, dataset.histories
    if category is None:
        category = default_category_column(m)
    elif category not in {c.name for c in m.item_categoricals}:
        raise ConfigError(f"headroom buckets: category={category!r} should be one of the dataset's inherent "
                          f"categorical columns {[c.name for c in m.item_categoricals]}")
    rows = np.asarray(samples.event_row, dtype=np.int64)
    users = np.asarray(samples.user_id, dtype=np.int64)
    event_category = dataset.items[category].astype(np.int64)[h.item_id]  # [E]
    ends = h.end_before(users, np.asarray(samples.ts, dtype=np.int64))
    dist = previous_same_category_distance(h.offsets, event_category, rows, ends)
    return SampleBuckets(bucket=bucket_of_distance(dist, int(long_len)), distance=dist, category=category,
                         long_len=int(long_len))

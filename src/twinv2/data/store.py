"""Dataset folders: a streaming, validating, atomic writer and a reader with CSR histories.

Events are stored once, sorted by ``(user_id, ts)`` with a stable sort; ``user_offsets.npy`` holds the CSR
offsets, so user ``u``'s history is rows ``offsets[u]:offsets[u+1]``. Training samples never copy
sequences: they are sliced from these arrays at batch time.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2._io import atomic_dir, load_npy, save_npy_atomic
from twinv2.data.schema import MANIFEST_NAME, ColumnSpec, Manifest, validate_table
from twinv2.errors import DataValidationError

__all__ = ["Dataset", "DatasetWriter", "Histories", "check_out_dir", "dataset_identity", "load_dataset",
           "write_dataset"]

ITEMS_FILE, EVENTS_FILE = "items.parquet", "events.parquet"
USERS_FILE, OFFSETS_FILE = "users.parquet", "user_offsets.npy"
_TS_BITS = 34  # composite key (user << 34) + (ts - time_min): 34 bits of seconds = 544 years


@dataclass
class Histories:
    """Per-user behavior histories in CSR form.

    Attributes:
        offsets: int64 ``[U + 1]``; user ``u`` owns rows ``offsets[u]:offsets[u + 1]``.
        item_id: int64 ``[E]``; ts: int64 ``[E]``; label: int8 ``[E]``.
        cross: float32 ``[E]`` arrays keyed by cross-feature name, in manifest order.
        time_min: the smallest timestamp (origin of the composite search key).
    """

    offsets: np.ndarray
    item_id: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    cross: dict[str, np.ndarray]
    time_min: int = 0
    _key: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        """int64 ``[U]``: number of behaviors per user."""
        return np.diff(self.offsets)

    def _search_key(self) -> np.ndarray:
        if self._key is None:
            users = np.repeat(np.arange(self.num_users, dtype=np.int64), self.lengths())
            self._key = (users << _TS_BITS) + (self.ts - self.time_min)
        return self._key

    def end_before(self, users: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Row index one past the last behavior of ``users[b]`` strictly before ``ts[b]``.

        Args:
            users: int64 ``[B]`` user ids; ts: int64 ``[B]`` request timestamps.
        Returns:
            int64 ``[B]`` ``end`` such that rows ``offsets[u]:end`` are exactly the user's behaviors with
            timestamp ``< ts`` (ties at ``ts`` excluded: no leakage).
        """
        users = np.asarray(users, dtype=np.int64)
        ts = np.clip(np.asarray(ts, dtype=np.int64) - self.time_min, 0, (1 << _TS_BITS) - 1)
        return np.searchsorted(self._search_key(), (users << _TS_BITS) + ts, side="left").astype(np.int64)


@dataclass
class Dataset:
    """A loaded dataset: manifest, item feature columns indexed by item id, and CSR histories.

    ``items[name][i]`` is feature ``name`` of item ``i``; row 0 is the padding item (zeros).
    """

    path: Path
    manifest: Manifest
    items: dict[str, np.ndarray]
    histories: Histories
    raw_user_ids: np.ndarray | None = None


def dataset_identity(dataset: Dataset | Manifest) -> dict[str, Any]:
    """What must agree between a dataset and an artefact made from it (a checkpoint, embeddings): the
    schema fingerprint (columns, vocabularies, item count), user and event counts, the time range and,
    given a loaded :class:`Dataset`, a hash of the per-user event counts (the fingerprint alone does not
    tell two generated datasets of one scale apart)."""
    import hashlib

    manifest = dataset.manifest if isinstance(dataset, Dataset) else dataset
    identity: dict[str, Any] = {
        "fingerprint": manifest.fingerprint(),
        "num_users": manifest.num_users,
        "num_items": manifest.num_items,
        "num_events": manifest.num_events,
        "time_min": manifest.time_min,
        "time_max": manifest.time_max,
    }
    if isinstance(dataset, Dataset):
        offsets = np.ascontiguousarray(dataset.histories.offsets, dtype=np.int64)
        identity["user_counts_sha256"] = hashlib.sha256(offsets.tobytes()).hexdigest()[:16]
    return identity


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.exists():
        raise DataValidationError(str(path), None, "an existing file", "no such file")
    try:
        return pq.read_table(path, columns=columns)
    except PermissionError:
        raise
    except (pa.ArrowInvalid, OSError) as exc:  # a truncated file can surface as an Arrow IO error
        raise DataValidationError(str(path), None, "a readable Parquet file", str(exc).splitlines()[0]) from exc
    except KeyError as exc:  # pragma: no cover - pyarrow raises ArrowInvalid for missing columns
        raise DataValidationError(str(path), str(exc), "a column present in the file") from exc


def _check_items(table: pa.Table, manifest_cols: list[ColumnSpec], file: str) -> int:
    validate_table(table, manifest_cols, file)
    ids = table.column("item_id").to_numpy()
    if ids.size == 0:
        raise DataValidationError(file, "item_id", "at least one item", "an empty table")
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:5].tolist()
        raise DataValidationError(file, "item_id", "unique item ids",
                                  f"{int((counts > 1).sum())} duplicated, e.g. {dup}")
    if ids.min() < 1 or ids.max() != len(ids):
        raise DataValidationError(file, "item_id", f"dense ids 1..{len(ids)} (0 is padding)",
                                  f"range {ids.min()}..{ids.max()}")
    return len(ids)


def check_out_dir(out: str | os.PathLike, overwrite: bool = True) -> Path:
    """Refuse to replace an existing path unless ``overwrite``, and never replace a non-dataset folder.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is false, or it is a file or a non-empty folder
            without ``manifest.json`` (replacing it would delete unrelated files).
    """
    out = Path(out)
    if not out.exists():
        return out
    if not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite / overwrite=True to replace it)")
    if not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a dataset folder; refusing to replace it")
    if any(out.iterdir()) and not (out / MANIFEST_NAME).exists():
        raise FileExistsError(f"{out} is a non-empty folder without {MANIFEST_NAME}; refusing to replace it")
    return out


def load_items(path: str | os.PathLike, manifest: Manifest) -> dict[str, np.ndarray]:
    """A dataset folder's item features, validated: ``items[name][i]`` is feature ``name`` of item ``i``
    (arrays ``[num_items + 1]``, row 0 = padding zeros). Raises DataValidationError naming the file."""
    path = Path(path)
    items_t = _read_parquet(path / ITEMS_FILE)
    num_items = _check_items(items_t, list(manifest.item_columns), str(path / ITEMS_FILE))
    if num_items != manifest.num_items:
        raise DataValidationError(str(path / ITEMS_FILE), "item_id", f"{manifest.num_items} items (manifest)",
                                  str(num_items))
    order = np.argsort(items_t.column("item_id").to_numpy(), kind="stable")
    items: dict[str, np.ndarray] = {}
    for c in manifest.item_columns:
        if c.role != "raw_id":
            col = items_t.column(c.name).to_numpy()[order]
            items[c.name] = np.concatenate([np.zeros(1, col.dtype), col])
    return items


def load_dataset(path: str | os.PathLike, *, check_values: bool = True) -> Dataset:
    """Read a dataset folder, validating it against its manifest.

    Args:
        path: folder written by an importer or the synthetic generator.
        check_values: also check values (NaN, negatives, vocab ranges), not just columns and dtypes.
    Raises:
        DataValidationError: naming the file and column at fault.
    """
    path = Path(path)
    manifest = Manifest.load(path / MANIFEST_NAME)
    items = load_items(path, manifest)
    num_items = manifest.num_items

    event_cols = [c for c in manifest.event_columns if c.role != "raw_id"]
    events_file = str(path / EVENTS_FILE)
    events_t = _read_parquet(path / EVENTS_FILE, [c.name for c in event_cols])
    validate_table(events_t, event_cols, events_file, check_values=check_values)
    offsets = load_npy(path / OFFSETS_FILE)
    user_id = events_t.column("user_id").to_numpy()
    if (offsets.dtype.kind not in "iu" or offsets.ndim != 1 or len(offsets) != manifest.num_users + 1
            or offsets[0] != 0 or offsets[-1] != len(user_id)):
        raise DataValidationError(str(path / OFFSETS_FILE), None,
                                  f"CSR offsets of length {manifest.num_users + 1} ending at {len(user_id)}")
    if check_values and not np.array_equal(np.diff(offsets), np.bincount(user_id, minlength=manifest.num_users)):
        raise DataValidationError(str(path / OFFSETS_FILE), "user_id", "offsets matching the sorted events")
    item_id = events_t.column("item_id").to_numpy()
    if check_values and item_id.size and item_id.max() > num_items:
        raise DataValidationError(events_file, "item_id", f"ids present in items.parquet (<= {num_items})",
                                  f"{item_id.max()}")
    hist = Histories(
        offsets=offsets.astype(np.int64),
        item_id=item_id.astype(np.int64, copy=False),
        ts=events_t.column("ts").to_numpy().astype(np.int64, copy=False),
        label=events_t.column("label").to_numpy().astype(np.int8, copy=False),
        cross={c.name: events_t.column(c.name).to_numpy().astype(np.float32, copy=False)
               for c in manifest.cross_numerics},
        time_min=manifest.time_min,
    )
    raw_users = None
    if (path / USERS_FILE).exists():
        raw_users = _read_parquet(path / USERS_FILE).column("raw_user_id").to_numpy(zero_copy_only=False)
    return Dataset(path=path, manifest=manifest, items=items, histories=hist, raw_user_ids=raw_users)


class DatasetWriter:
    """Streams a dataset into a folder, validating as it goes; the folder appears only on success.

    Usage::

        with DatasetWriter(out, name="x", source="csv", item_columns=..., event_columns=...) as w:
            w.write_items(items_table)
            for chunk in chunks:          # sorted by (user_id, ts), users in increasing order
                w.write_events(chunk)
            w.write_users(users_table)    # optional: user_id, raw_user_id
        manifest = w.manifest

    Memory stays bounded by one chunk plus per-user counts, so the ``large`` synthetic scale streams.
    """

    def __init__(self, out: str | os.PathLike, *, name: str, source: str, item_columns: list[ColumnSpec],
                 event_columns: list[ColumnSpec], notes: dict[str, Any] | None = None,
                 extra_files: dict[str, bytes] | None = None):
        self.out = Path(out)
        self.name, self.source, self.notes = name, source, dict(notes or {})
        self.item_columns, self.event_columns = list(item_columns), list(event_columns)
        self.extra_files = dict(extra_files or {})
        self.manifest: Manifest | None = None
        self._stack = contextlib.ExitStack()
        self._events_writer: pq.ParquetWriter | None = None
        self._num_items: int | None = None
        self._counts: list[tuple[int, np.ndarray]] = []  # (first user of chunk, per-user counts)
        self._last_user, self._last_ts = -1, np.iinfo(np.int64).min
        self._num_events = 0
        self._tmin, self._tmax = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        self._max_user = -1
        self._users_written: int | None = None

    @property
    def tmp(self) -> Path:
        """The temporary folder being written (extra files may be placed here before closing)."""
        return self._tmp

    def __enter__(self) -> DatasetWriter:
        self._tmp = self._stack.enter_context(atomic_dir(self.out))
        return self

    def write_items(self, table: pa.Table) -> None:
        """Write the item table once (validated: unique dense ids, declared columns and values)."""
        self._num_items = _check_items(table, self.item_columns, ITEMS_FILE)
        table = table.select([c.name for c in self.item_columns])
        pq.write_table(table.sort_by("item_id"), self._tmp / ITEMS_FILE)

    def write_users(self, table: pa.Table) -> None:
        """Write ``user_id`` (dense ints) and ``raw_user_id`` (strings) for lookups by source id."""
        specs = [ColumnSpec("user_id", "id", "int64"), ColumnSpec("raw_user_id", "raw_id", "string")]
        validate_table(table, specs, USERS_FILE)
        pq.write_table(table.select(["user_id", "raw_user_id"]).sort_by("user_id"), self._tmp / USERS_FILE)
        self._users_written = table.num_rows

    def write_events(self, table: pa.Table) -> None:
        """Append a chunk of events; users must arrive in increasing id order, ts sorted within a user."""
        if self._num_items is None:
            raise RuntimeError("write_items must be called before write_events")
        validate_table(table, self.event_columns, EVENTS_FILE)
        table = table.select([c.name for c in self.event_columns])
        n = table.num_rows
        if n == 0:
            return
        users = table.column("user_id").to_numpy()
        ts = table.column("ts").to_numpy()
        items = table.column("item_id").to_numpy()
        if items.min() < 1 or items.max() > self._num_items:
            bad = items[(items < 1) | (items > self._num_items)][:5].tolist()
            raise DataValidationError(EVENTS_FILE, "item_id", f"ids in items.parquet (1..{self._num_items})",
                                      f"unknown ids {bad}")
        prev_u = np.concatenate([[self._last_user], users[:-1]])
        prev_t = np.concatenate([[self._last_ts], ts[:-1]])
        bad = (users < prev_u) | ((users == prev_u) & (ts < prev_t))
        if bad.any():
            row = self._num_events + int(np.argmax(bad))
            raise DataValidationError(EVENTS_FILE, "user_id/ts", "events sorted by (user_id, ts)",
                                      f"out of order at row {row}")
        if self._events_writer is None:
            self._events_writer = self._stack.enter_context(
                pq.ParquetWriter(self._tmp / EVENTS_FILE, table.schema, compression="zstd"))
        self._events_writer.write_table(table, row_group_size=1 << 20)
        self._counts.append((int(users[0]), np.bincount(users - users[0]).astype(np.int64)))
        self._last_user, self._last_ts = int(users[-1]), int(ts[-1])
        self._num_events += n
        self._tmin, self._tmax = min(self._tmin, int(ts.min())), max(self._tmax, int(ts.max()))
        self._max_user = max(self._max_user, int(users[-1]))

    def _offsets(self, num_users: int) -> np.ndarray:
        counts = np.zeros(num_users, dtype=np.int64)
        for start, c in self._counts:
            counts[start:start + len(c)] += c
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as finish_exc:
                # Let atomic_dir see the failure so it removes the temporary folder.
                self._stack.__exit__(type(finish_exc), finish_exc, finish_exc.__traceback__)
                raise
        return bool(self._stack.__exit__(exc_type, exc, tb))

    def _finish(self) -> None:
        if self._num_items is None:
            raise DataValidationError(ITEMS_FILE, None, "an item table", "none was written")
        if self._events_writer is None:
            raise DataValidationError(EVENTS_FILE, None, "at least one event", "none were written")
        self._events_writer.close()
        num_users = self._users_written if self._users_written is not None else self._max_user + 1
        if self._max_user >= num_users:
            raise DataValidationError(EVENTS_FILE, "user_id", f"ids below {num_users} (users.parquet)",
                                      str(self._max_user))
        save_npy_atomic(self._tmp / OFFSETS_FILE, self._offsets(num_users))
        for name, content in self.extra_files.items():
            (self._tmp / name).write_bytes(content)
        self.manifest = Manifest(
            name=self.name, source=self.source, num_users=num_users, num_items=self._num_items,
            num_events=self._num_events, time_min=self._tmin, time_max=self._tmax,
            item_columns=self.item_columns, event_columns=self.event_columns, notes=self.notes,
        )
        self.manifest.check()
        self.manifest.save(self._tmp / MANIFEST_NAME)


def write_dataset(out: str | os.PathLike, *, name: str, source: str, items: pa.Table, events: pa.Table,
                  item_columns: list[ColumnSpec], event_columns: list[ColumnSpec], users: pa.Table | None = None,
                  notes: dict[str, Any] | None = None) -> Manifest:
    """Write a whole dataset in one call (events must already be sorted by ``(user_id, ts)``)."""
    with DatasetWriter(out, name=name, source=source, item_columns=item_columns, event_columns=event_columns,
                       notes=notes) as w:
        w.write_items(items)
        for batch in events.to_batches(max_chunksize=1 << 21):
            w.write_events(pa.Table.from_batches([batch]))
        if users is not None:
            w.write_users(users)
    assert w.manifest is not None
    return w.manifest

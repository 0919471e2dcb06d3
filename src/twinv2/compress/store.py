"""The compressed life-cycle folder: its file layout, the part schema, and the loader.

A folder written by ``twinv2 compress`` holds::

    job.json                 run parameters (written first; a rerun must match them to resume)
    item_embeddings.npy      float32 [num_items + 1, d], the table that was clustered (row 0 = padding)
    part-00000.parquet ...   virtual items of users [p * users_per_part, (p + 1) * users_per_part)
    user_offsets.npy         int64 [U + 1] CSR offsets over the concatenated parts (written at the end)
    manifest.json            the run parameters plus results (written last: its presence = complete)

Rows of one user are sorted by ``last_ts`` ascending (most recent cluster last). Columns of a part:
``user_id``, ``rep_item_id``, ``cluster_size``, ``completion_group``, ``first_ts``, ``last_ts``,
``mean_ts``, one ``mean_<name>`` float32 per feature of :func:`mean_feature_names`, ``mean_sq_dist``
(mean squared distance of the members to the centroid, in the clustered space) and ``centroid``
(list<float32> of length d: the mean of the members' clustered embeddings, needed by incremental updates),
then, for every inherent categorical ``<name>`` listed in the manifest's ``member_share_features``,
``majority_share_<name>`` and ``rep_share_<name>`` (float32: the share of the members holding the
cluster's most frequent value, and the share holding the representative's value; NaN where an incremental
update could not know it). Folders written before those columns existed have no such list.

The last section reads a *dataset's* events in bounded memory for the job (:class:`EventFile`: row ranges
from ``events.parquet``, a row group at a time; :func:`open_dataset_events`: the manifest, items and user
offsets without the events; :func:`scan_events`: one validating pass), so that neither the job nor the
co-occurrence embeddings ever hold the whole log.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twinv2._io import atomic_file, load_npy, read_json_object
from twinv2.data.schema import MANIFEST_NAME, Manifest, validate_table
from twinv2.data.store import EVENTS_FILE, Dataset, Histories, load_items
from twinv2.data.store import OFFSETS_FILE as DATA_OFFSETS_FILE
from twinv2.errors import CompressionError, DataValidationError

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "CompressedLifeCycles",
    "EventChunks",
    "EventFile",
    "load_compressed",
    "load_member_shares",
    "mean_feature_names",
    "members_per_user",
    "open_dataset_events",
    "open_event_chunks",
    "read_compressed_manifest",
    "scan_events",
    "share_columns",
    "virtual_item_schema",
]

FORMAT_VERSION = 1
KIND = "twinv2-compressed"
MANIFEST_FILE = "manifest.json"
JOB_FILE = "job.json"
OFFSETS_FILE = "user_offsets.npy"
EMBEDDINGS_FILE = "item_embeddings.npy"
GAP_FEATURE = "gap_to_snapshot"

# Columns every part has before the per-feature means, with their Arrow types.
BASE_COLUMNS: dict[str, pa.DataType] = {
    "user_id": pa.int64(),
    "rep_item_id": pa.int64(),
    "cluster_size": pa.int64(),
    "completion_group": pa.int8(),
    "first_ts": pa.int64(),
    "last_ts": pa.int64(),
    "mean_ts": pa.float64(),
}

Columns = dict[str, np.ndarray]


def part_name(index: int) -> str:
    """File name of part ``index`` (``part-00007.parquet``)."""
    return f"part-{index:05d}.parquet"


def mean_feature_names(manifest: Manifest) -> list[str]:
    """Features averaged over a cluster's members, in column order.

    The manifest's cross numerics (``play_time``, ``completion_ratio``, ...), then ``label``, then the
    inherent item numerics (``duration``, ...), then ``gap_to_snapshot`` (seconds from the behavior to the
    snapshot). Raises :class:`CompressionError` if two of these names collide.
    """
    names = [c.name for c in manifest.cross_numerics] + ["label"] + [c.name for c in manifest.item_numerics]
    names.append(GAP_FEATURE)
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise CompressionError(f"dataset manifest: feature name {n!r} is used twice among the cross "
                                   "numerics, 'label', the item numerics and 'gap_to_snapshot'; rename one")
        seen.add(n)
    return names


def share_columns(name: str) -> tuple[str, str]:
    """The part columns of inherent categorical ``name``: ``(majority_share_<name>, rep_share_<name>)``."""
    return f"majority_share_{name}", f"rep_share_{name}"


def virtual_item_schema(mean_names: list[str], share_names: list[str] | tuple[str, ...] = ()) -> pa.Schema:
    """Arrow schema of a part file for the given averaged features and member-share categoricals (see the
    module docstring)."""
    fields = [pa.field(name, t, nullable=False) for name, t in BASE_COLUMNS.items()]
    fields += [pa.field(f"mean_{n}", pa.float32(), nullable=False) for n in mean_names]
    fields.append(pa.field("mean_sq_dist", pa.float32(), nullable=False))
    fields.append(pa.field("centroid", pa.list_(pa.float32()), nullable=False))
    for n in share_names:
        fields += [pa.field(c, pa.float32(), nullable=False) for c in share_columns(n)]
    return pa.schema(fields)


def columns_to_table(columns: Columns, schema: pa.Schema) -> pa.Table:
    """Build the Arrow table of a part from numpy columns (``centroid`` float32 ``[C, d]``). No validation."""
    arrays = []
    for f in schema:
        values = columns[f.name]
        if f.name == "centroid":
            num, dim = values.shape
            offsets = pa.array(np.arange(num + 1, dtype=np.int32) * np.int32(dim))
            arrays.append(pa.ListArray.from_arrays(offsets, pa.array(values.reshape(-1), pa.float32())))
        else:
            arrays.append(pa.array(np.ascontiguousarray(values), f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def table_to_columns(table: pa.Table, file: str) -> Columns:
    """Numpy columns of a part table; ``centroid`` becomes float32 ``[C, d]`` (checked rectangular)."""
    out: Columns = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if name == "centroid":
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            dim = int(lengths[0]) if len(lengths) else 0
            if len(lengths) and (lengths != dim).any():
                raise DataValidationError(file, "centroid", f"centroids of one length ({dim})",
                                          f"lengths {sorted(set(lengths.tolist()))[:5]}")
            flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
            out[name] = flat.reshape(len(lengths), dim)
        else:
            out[name] = col.to_numpy(zero_copy_only=False)
    return out


def empty_columns(schema: pa.Schema, dim: int) -> Columns:
    """Zero-row columns matching ``schema`` (a user or part without behaviors)."""
    out: Columns = {}
    for f in schema:
        if f.name == "centroid":
            out[f.name] = np.zeros((0, dim), np.float32)
        else:
            out[f.name] = np.zeros(0, f.type.to_pandas_dtype())
    return out


def concat_columns(parts: list[Columns], schema: pa.Schema, dim: int) -> Columns:
    """Concatenate per-user columns in order (``centroid`` along rows)."""
    if not parts:
        return empty_columns(schema, dim)
    return {name: np.concatenate([p[name] for p in parts], axis=0) for name in parts[0]}


def write_part(path: str | os.PathLike, columns: Columns, schema: pa.Schema) -> None:
    """Write one part file atomically (zstd Parquet); same columns always give the same bytes."""
    table = columns_to_table(columns, schema)
    with atomic_file(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")


def read_part(path: str | os.PathLike) -> Columns:
    """Read one part file back into numpy columns."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DataValidationError(str(path), None, "a readable part file", str(exc).splitlines()[0]) from exc
    return table_to_columns(table, str(path))


def read_compressed_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``manifest.json`` of a finished compressed folder.

    Raises :class:`DataValidationError` if the folder is not a (complete) compressed folder.
    """
    path = Path(path)
    file = path / MANIFEST_FILE
    if not file.exists():
        hint = (" (the run did not finish: rerun the same `twinv2 compress` command to complete it)"
                if (path / JOB_FILE).exists() else "")
        raise DataValidationError(str(file), None, "the manifest of a finished compression run",
                                  "no such file" + hint)
    manifest = read_json_object(file, "a JSON object (the compressed folder's manifest)")
    if manifest.get("kind") != KIND:
        raise DataValidationError(str(file), None, f"kind {KIND!r}", repr(manifest.get("kind")))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataValidationError(str(file), None, f"format_version {FORMAT_VERSION}",
                                  repr(manifest.get("format_version")))
    for key in ("snapshot_ts", "num_users", "num_clusters", "partitions", "mean_features", "embedding_dim"):
        if key not in manifest:
            raise DataValidationError(str(file), None, f"field {key!r}", "it is missing")
    return manifest


@dataclass
class CompressedLifeCycles:
    """Virtual items of every user in CSR form (what training and serving read).

    Attributes:
        offsets: int64 ``[U + 1]``; user ``u``'s clusters are rows ``offsets[u]:offsets[u + 1]``, sorted by
            ``last_ts`` ascending (most recent last).
        rep_item_id: int64 ``[C]`` representative item (member closest to the centroid).
        cluster_size: int64 ``[C]`` members n; completion_group: int8 ``[C]``.
        first_ts, last_ts: int64 ``[C]``; mean_ts: float64 ``[C]``.
        means: float32 ``[C]`` per feature, keyed by the plain feature name (``play_time``, ``label``,
            ``duration``, ``gap_to_snapshot``, ...).
        mean_sq_dist: float32 ``[C]`` mean squared member-to-centroid distance (clustered space).
        snapshot_ts: behaviors strictly before this time were compressed.
        manifest: the folder's ``manifest.json``.
        centroids: float32 ``[C, d]`` when loaded with ``with_centroids=True``, else None.
    """

    offsets: np.ndarray
    rep_item_id: np.ndarray
    cluster_size: np.ndarray
    completion_group: np.ndarray
    first_ts: np.ndarray
    last_ts: np.ndarray
    mean_ts: np.ndarray
    means: dict[str, np.ndarray]
    mean_sq_dist: np.ndarray
    snapshot_ts: int
    manifest: dict[str, Any]
    centroids: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_clusters(self) -> int:
        return len(self.rep_item_id)


def members_per_user(comp: CompressedLifeCycles) -> np.ndarray:
    """Behaviors held by each user's clusters, int64 ``[U]``: what a dataset must have before the snapshot
    for ``comp`` to belong to it (the check behind every "compressed folder of another dataset" error)."""
    return np.diff(np.concatenate([[0], np.cumsum(comp.cluster_size, dtype=np.int64)])[comp.offsets])


def load_compressed(path: str | os.PathLike, *, with_centroids: bool = False) -> CompressedLifeCycles:
    """Load a finished compressed folder.

    Args:
        path: folder written by :func:`twinv2.compress.compress_dataset`.
        with_centroids: also load the float32 ``[C, d]`` centroids (only incremental updates need them).
    Raises:
        DataValidationError: unfinished run, unknown format, or parts that disagree with the offsets.

    Example:
        >>> c = load_compressed("out/compressed")  # doctest: +SKIP
        >>> u = 3; c.rep_item_id[c.offsets[u]:c.offsets[u + 1]]  # doctest: +SKIP
    """
    path = Path(path)
    manifest = read_compressed_manifest(path)
    mean_names = list(manifest["mean_features"])
    wanted = list(BASE_COLUMNS) + [f"mean_{n}" for n in mean_names] + ["mean_sq_dist"]
    if with_centroids:
        wanted.append("centroid")
    tables = _read_parts(path, manifest, wanted)
    schema = virtual_item_schema(mean_names)
    table = pa.concat_tables(tables) if tables else schema.empty_table().select(wanted)
    cols = table_to_columns(table, str(path))
    offsets_file = path / OFFSETS_FILE
    offsets = load_npy(offsets_file) if offsets_file.exists() else None
    num_users = int(manifest["num_users"])
    if offsets is None or offsets.dtype.kind not in "iu" or offsets.shape != (num_users + 1,) \
            or offsets[-1] != table.num_rows:
        raise DataValidationError(str(offsets_file), None,
                                  f"int64 CSR offsets of length {num_users + 1} ending at {table.num_rows}")
    if not np.array_equal(np.diff(offsets), np.bincount(cols["user_id"], minlength=num_users)):
        raise DataValidationError(str(offsets_file), "user_id", "offsets matching the parts' user ids")
    return CompressedLifeCycles(
        offsets=offsets.astype(np.int64, copy=False),
        rep_item_id=cols["rep_item_id"],
        cluster_size=cols["cluster_size"],
        completion_group=cols["completion_group"],
        first_ts=cols["first_ts"],
        last_ts=cols["last_ts"],
        mean_ts=cols["mean_ts"],
        means={n: cols[f"mean_{n}"] for n in mean_names},
        mean_sq_dist=cols["mean_sq_dist"],
        snapshot_ts=int(manifest["snapshot_ts"]),
        manifest=manifest,
        centroids=cols.get("centroid"),
    )


def _read_parts(path: Path, manifest: dict[str, Any], columns: list[str]) -> list[pa.Table]:
    """The ``columns`` of every part file a finished folder's manifest lists, in manifest order.

    Raises:
        DataValidationError: a part file that cannot be read or lacks one of the columns.
    """
    tables = []
    for part in manifest["partitions"]:
        file = path / part["file"]
        try:
            tables.append(pq.read_table(file, columns=columns))
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataValidationError(str(file), None, f"a part file with columns {columns}",
                                      str(exc).splitlines()[0]) from exc
    return tables


def load_member_shares(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """Per inherent categorical, the ``(majority_share, rep_share)`` float32 ``[C]`` columns of a finished
    folder, rows in the order of :func:`load_compressed`; None for a folder written before they existed.

    Raises:
        DataValidationError: unfinished run, or a part file without the columns its manifest lists.
    """
    path = Path(path)
    manifest = read_compressed_manifest(path)
    names = manifest.get("member_share_features")
    if names is None:
        return None
    wanted = [c for n in names for c in share_columns(n)]
    tables = _read_parts(path, manifest, wanted)
    schema = pa.schema([pa.field(c, pa.float32()) for c in wanted])
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    out = {}
    for n in names:
        majority_col, rep_col = share_columns(n)
        out[n] = tuple(table.column(c).to_numpy().astype(np.float32, copy=False) for c in (majority_col, rep_col))
    return out  # type: ignore[return-value]


def check_compressed_output(path: str | os.PathLike) -> None:
    """Raise :class:`CompressionError` if ``path`` exists, is not empty, and is not a compression folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CompressionError(f"{path}: expected a folder for the compressed output, found a file")
    if path.is_dir() and any(path.iterdir()) and not ((path / JOB_FILE).exists() or (path / MANIFEST_FILE).exists()):
        raise CompressionError(f"{path}: the folder exists and is not a compressed life-cycle folder; "
                               "choose another --out")


# ---- the dataset's events, read part by part (the local job, the co-occurrence embeddings) ------------

DEFAULT_CHUNK_ROWS = 1 << 21
"""Behaviors per chunk when the events are streamed for the co-occurrence embeddings (never splitting a user)."""

EventChunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
"""A pass factory: each call returns a new pass over the behaviors to learn from (those before the
snapshot), as ``(item_id, user)`` int64 ``[n]`` chunks in ``(user, ts)`` order that never split a user."""


def user_ranges(offsets: np.ndarray, rows: int) -> Iterator[tuple[int, int]]:
    """Consecutive user ranges ``[u0, u1)`` of about ``rows`` behaviors each (a longer user alone)."""
    num_users = len(offsets) - 1
    u0 = 0
    while u0 < num_users:
        u1 = int(np.searchsorted(offsets, offsets[u0] + rows, side="right")) - 1
        u1 = min(max(u1, u0 + 1), num_users)
        yield u0, u1
        u0 = u1


_GROUP_CACHE: OrderedDict[tuple[Any, ...], dict[str, np.ndarray]] = OrderedDict()  # per process
_GROUP_CACHE_SIZE = 2  # row groups: consecutive parts and chunks mostly share one
_EVENT_DTYPES = {"item_id": np.int64, "ts": np.int64, "label": np.int8}  # else float32 (cross numerics)


def _file_identity(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


def _parquet_error(path: Path, exc: Exception) -> DataValidationError:
    return DataValidationError(str(path), None, "a readable Parquet file", str(exc).splitlines()[0])


@dataclass
class EventFile:
    """A dataset's ``events.parquet``, read by row ranges one row group at a time (picklable and small: what
    a part task carries instead of behaviors). Columns come with the dtypes of
    :func:`twinv2.data.store.load_dataset`: ``item_id``, ``ts`` int64, ``label`` int8, cross numerics float32.

    Attributes:
        path: the file; identity: (inode, size, mtime) when opened, checked at every read.
        starts: int64 ``[G + 1]``: first row of each row group, then the number of rows.
        cross: the cross numerics, in manifest order.
    """

    path: str
    identity: tuple[int, int, int]
    starts: np.ndarray
    cross: list[str]

    @classmethod
    def open(cls, path: Path, manifest: Manifest) -> EventFile:
        """Check the file's columns against the manifest and index its row groups (reads only the footer)."""
        if not path.exists():
            raise DataValidationError(str(path), None, "an existing file", "no such file")
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowInvalid, OSError) as exc:
            raise _parquet_error(path, exc) from exc
        columns = [c for c in manifest.event_columns if c.role != "raw_id"]
        validate_table(meta.schema.to_arrow_schema().empty_table(), columns, str(path), check_values=False)
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        return cls(str(path), _file_identity(path), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                   [c.name for c in manifest.cross_numerics])

    @property
    def num_rows(self) -> int:
        return int(self.starts[-1])

    @property
    def columns(self) -> list[str]:
        """What a part reads: ``item_id``, ``ts``, ``label`` and the cross numerics."""
        return ["item_id", "ts", "label", *self.cross]

    def _file(self) -> pq.ParquetFile:
        path = Path(self.path)
        if not path.exists() or _file_identity(path) != self.identity:
            raise CompressionError(f"{path}: the dataset changed while the job was reading it; rerun the command")
        try:
            return pq.ParquetFile(path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _parquet_error(path, exc) from exc

    def row_groups(self, columns: list[str]) -> Iterator[pa.Table]:
        """Every row group in order, as an Arrow table of ``columns`` (one in memory at a time)."""
        f = self._file()
        for g in range(len(self.starts) - 1):
            try:
                yield f.read_row_group(g, columns=columns)
            except (pa.ArrowInvalid, OSError) as exc:
                raise _parquet_error(Path(self.path), exc) from exc

    def _group(self, g: int, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        key = (self.path, self.identity, g, columns)
        if key in _GROUP_CACHE:
            _GROUP_CACHE.move_to_end(key)
            return _GROUP_CACHE[key]
        try:
            table = self._file().read_row_group(g, columns=list(columns))
        except (pa.ArrowInvalid, OSError) as exc:
            raise _parquet_error(Path(self.path), exc) from exc
        arrays = {c: table.column(c).to_numpy().astype(_EVENT_DTYPES.get(c, np.float32), copy=False)
                  for c in columns}
        _GROUP_CACHE[key] = arrays
        while len(_GROUP_CACHE) > _GROUP_CACHE_SIZE:
            _GROUP_CACHE.popitem(last=False)
        return arrays

    def read(self, lo: int, hi: int, columns: list[str] | None = None) -> dict[str, np.ndarray]:
        """Rows ``[lo, hi)`` of ``columns`` (default :attr:`columns`); memory: the row groups they span."""
        names = tuple(columns or self.columns)
        pieces: dict[str, list[np.ndarray]] = {c: [] for c in names}
        g = max(int(np.searchsorted(self.starts, lo, side="right")) - 1, 0)
        while g < len(self.starts) - 1 and self.starts[g] < hi:
            a, b = max(lo, self.starts[g]) - self.starts[g], min(hi, self.starts[g + 1]) - self.starts[g]
            if b > a:
                group = self._group(g, names)
                for c in names:
                    pieces[c].append(group[c][a:b])
            g += 1
        return {c: (v[0] if len(v) == 1 else np.concatenate(v) if v else
                    np.zeros(0, _EVENT_DTYPES.get(c, np.float32))) for c, v in pieces.items()}

    def chunks_before(self, offsets: np.ndarray, end_rows: np.ndarray, rows: int = DEFAULT_CHUNK_ROWS
                      ) -> EventChunks:
        """:data:`EventChunks` of user ``u``'s rows ``offsets[u]:end_rows[u]``, about ``rows`` rows at a time;
        reads ``item_id`` only."""

        def one_pass() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for u0, u1 in user_ranges(offsets, rows):
                lo, hi = int(offsets[u0]), int(offsets[u1])
                lengths = np.diff(offsets[u0:u1 + 1])
                keep = np.arange(lo, hi) < np.repeat(end_rows[u0:u1], lengths)
                items = self.read(lo, hi, ["item_id"])["item_id"][keep]
                yield items, np.repeat(np.arange(u0, u1, dtype=np.int64), lengths)[keep]

        return one_pass


def open_dataset_events(path: str | os.PathLike) -> tuple[Dataset, EventFile]:
    """The dataset's manifest, items and user offsets, validated as :func:`twinv2.data.store.load_dataset`
    does, without its events: ``histories`` holds the offsets only (its per-behavior arrays are None, so a
    whole-log read fails loudly), and the events are read through the returned :class:`EventFile`
    (validated by :func:`scan_events`)."""
    path = Path(path)
    manifest = Manifest.load(path / MANIFEST_NAME)
    items = load_items(path, manifest)
    events = EventFile.open(path / EVENTS_FILE, manifest)
    offsets = load_npy(path / DATA_OFFSETS_FILE)
    if (offsets.dtype.kind not in "iu" or offsets.ndim != 1 or len(offsets) != manifest.num_users + 1
            or offsets[0] != 0 or offsets[-1] != events.num_rows):
        raise DataValidationError(str(path / DATA_OFFSETS_FILE), None,
                                  f"CSR offsets of length {manifest.num_users + 1} ending at {events.num_rows}")
    histories = Histories(offsets=offsets.astype(np.int64), item_id=None, ts=None, label=None,  # type: ignore[arg-type]
                          cross=None, time_min=manifest.time_min)  # type: ignore[arg-type]
    return Dataset(path=path, manifest=manifest, items=items, histories=histories), events


def open_event_chunks(path: str | os.PathLike, before_ts: int | None) -> tuple[Dataset, EventChunks]:
    """A dataset without its events (:func:`open_dataset_events`), its events validated in one streamed pass,
    and :data:`EventChunks` over each user's behaviors strictly before ``before_ts`` (all when None)."""
    ds, events = open_dataset_events(Path(path))
    offsets = ds.histories.offsets
    before, _ = scan_events(ds, events, [] if before_ts is None else [int(before_ts)])
    end_rows = offsets[1:] if before_ts is None else offsets[:-1] + before[0]
    return ds, events.chunks_before(offsets, end_rows)


def scan_events(ds: Dataset, events: EventFile, snapshots: list[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """One pass over the events, a row group at a time: the value checks of
    :func:`twinv2.data.store.load_dataset` and the ``(user_id, ts)`` order of the dataset writer, and, per
    snapshot, each user's number of behaviors strictly before it (int64 ``[U]``: its first ones).

    Returns those counts and the items that occur in the events, bool ``[num_items + 1]``.
    """
    m, offsets = ds.manifest, ds.histories.offsets
    columns = [c for c in m.event_columns if c.role != "raw_id"]
    num_users = m.num_users
    counts = np.zeros(num_users, np.int64)
    before = [np.zeros(num_users, np.int64) for _ in snapshots]
    used = np.zeros(m.num_items + 1, bool)
    unknown_user, last_user, last_ts, row = False, -1, np.iinfo(np.int64).min, 0
    for table in events.row_groups([c.name for c in columns]):
        validate_table(table, columns, events.path)
        if table.num_rows == 0:
            continue
        user = table.column("user_id").to_numpy()
        item = table.column("item_id").to_numpy()
        ts = table.column("ts").to_numpy()
        # The CSR rows and "a user's behaviors before S are its first ones" need (user_id, ts) order.
        prev_user = np.concatenate([[last_user], user[:-1]])
        prev_ts = np.concatenate([[last_ts], ts[:-1]])
        disorder = (user < prev_user) | ((user == prev_user) & (ts < prev_ts))
        if disorder.any():
            raise DataValidationError(events.path, "user_id/ts", "events sorted by (user_id, ts)",
                                      f"out of order at row {row + int(np.argmax(disorder))}")
        last_user, last_ts, row = int(user[-1]), int(ts[-1]), row + len(user)
        first = int(user.min())  # the users of a row group are a narrow range: count within it
        per_user = np.bincount(user - first)
        if first + len(per_user) > num_users:
            unknown_user = True  # a user id past the offsets: reported below
            break
        counts[first:first + len(per_user)] += per_user
        if item.max() > m.num_items:
            raise DataValidationError(events.path, "item_id", f"ids present in items.parquet (<= {m.num_items})",
                                      f"{item.max()}")
        used[item] = True
        for snapshot, b in zip(snapshots, before, strict=True):
            b[first:first + len(per_user)] += np.bincount(user[ts < snapshot] - first, minlength=len(per_user))
    if unknown_user or not np.array_equal(np.diff(offsets), counts):
        raise DataValidationError(str(ds.path / DATA_OFFSETS_FILE), "user_id", "offsets matching the sorted events")
    return before, used

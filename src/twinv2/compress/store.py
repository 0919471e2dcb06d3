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
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twinv2._io import atomic_file, load_npy, read_json_object
from twinv2.data.schema import Manifest
from twinv2.errors import CompressionError, DataValidationError

__all__ = [
    "FORMAT_VERSION",
    "KIND",
    "CompressedLifeCycles",
    "load_compressed",
    "load_member_shares",
    "mean_feature_names",
    "members_per_user",
    "read_compressed_manifest",
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

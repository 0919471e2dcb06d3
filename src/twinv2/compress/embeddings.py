"""Item embedding sources for the compression job: a file, a trained checkpoint, or the events themselves.

TWIN-V2 clusters a user's behaviors by the embeddings of their items, learned by a recommendation model.
Three sources give the job an item table (float32 ``[num_items + 1, d]``, row ``i`` = dense item ``i``,
row 0 = padding):

- ``file``: ``.npy`` matrix ``[n, d]`` plus an ids file (``<name>.ids.npy`` beside it by default), or
  Parquet with a key column and the vector. Keys are the dataset's dense ``item_id`` (int) or, for
  embeddings made outside twinv2, the source's ``raw_item_id`` (strings; rows for raw ids the dataset does
  not know are skipped and counted).
- ``checkpoint``: a ``torch.save`` dict whose top-level key ``item_embeddings`` is a float tensor
  ``[num_items + 1, d]`` (row 0 = padding), read with ``weights_only=True``. If the dict also has a
  ``dataset_identity`` or ``manifest_fingerprint`` it must match the dataset's, and if it records its
  ``split``, its train window must end by the snapshot (leakage guard; ``allow_leakage`` overrides it and
  the compressed manifest records ``leakage_allowed``).
- ``cooccurrence`` (default, training-free): positive PMI of item co-occurrence within a sliding window over
  each user's history before the snapshot, factorised by a randomized truncated SVD; items that never
  co-occur get a deterministic hashed Gaussian vector.

Every item that occurs in the events must have a finite embedding (with ``missing="random"`` the absent
ones get the same hashed Gaussian vectors instead of an error).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from twinv2.compress.store import DEFAULT_CHUNK_ROWS, EventChunks, open_event_chunks, user_ranges
from twinv2.data.store import Dataset, Histories
from twinv2.errors import CheckpointError, CompressionError, ConfigError, EmbeddingError

__all__ = [
    "CHECKPOINT_KEY",
    "EmbeddingSource",
    "ItemEmbeddingTable",
    "cooccurrence_embeddings",
    "cooccurrence_embeddings_from_chunks",
    "export_cooccurrence_embeddings",
    "hashed_gaussian",
    "history_chunks",
    "item_embedding_table",
    "load_checkpoint_item_embeddings",
    "load_embedding_file",
    "write_embedding_file",
]

EMBEDDING_KINDS = ("cooccurrence", "file", "checkpoint")
MISSING_POLICIES = ("error", "random")
CHECKPOINT_KEY = "item_embeddings"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
FILE_SUFFIXES = (".npy", ".parquet")
_MAX_EXAMPLES = 5


@dataclass(frozen=True)
class EmbeddingSource:
    """Where the job gets item embeddings.

    Attributes:
        kind: ``cooccurrence`` | ``file`` | ``checkpoint``.
        path: the file (``file``, ``checkpoint``).
        ids_path: ids of a ``.npy`` matrix (default ``<name>.ids.npy`` beside it).
        dim, window: dimensions and half window of the ``cooccurrence`` default.
        missing: ``error`` (default) or ``random``: what to do about event items without an embedding.
        allow_leakage: accept a ``checkpoint`` whose training window reaches past the snapshot (its
            embeddings then carry behaviors and labels from after the snapshot into the clusters); the
            compressed manifest records it. Refused by default.
    """

    kind: str = "cooccurrence"
    path: str | None = None
    ids_path: str | None = None
    dim: int = 32
    window: int = 5
    missing: str = "error"
    allow_leakage: bool = False

    def __post_init__(self) -> None:
        if self.kind not in EMBEDDING_KINDS:
            raise ConfigError(f"embedding source kind must be one of {EMBEDDING_KINDS}, got {self.kind!r}")
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(f"--missing-embedding must be one of {MISSING_POLICIES}, got {self.missing!r}")
        if self.kind != "cooccurrence" and not self.path:
            raise ConfigError(f"embedding source {self.kind!r} needs a path")
        if self.dim < 1 or self.window < 1:
            raise ConfigError(f"embedding dim and window must be >= 1, got dim={self.dim}, window={self.window}")

    @classmethod
    def parse(cls, spec: str | os.PathLike | None, *, ids_path: str | os.PathLike | None = None, dim: int = 32,
              window: int = 5, missing: str = "error", allow_leakage: bool = False) -> EmbeddingSource:
        """Source from a CLI string: ``cooccurrence`` (or None), a ``.npy``/``.parquet`` file, or a checkpoint
        (``.pt``, ``.pth``, ``.ckpt``)."""
        if spec is None or str(spec) == "cooccurrence":
            return cls("cooccurrence", dim=dim, window=window, missing=missing)
        path = str(spec)
        suffix = Path(path).suffix.lower()
        if suffix in CHECKPOINT_SUFFIXES:
            return cls("checkpoint", path=path, missing=missing, allow_leakage=allow_leakage)
        if suffix in FILE_SUFFIXES:
            return cls("file", path=path, ids_path=str(ids_path) if ids_path else None, missing=missing)
        raise ConfigError(f"--embeddings {path!r}: expected 'cooccurrence', a .npy or .parquet file, or a "
                          f"checkpoint ({', '.join(CHECKPOINT_SUFFIXES)})")

    def describe(self) -> dict[str, Any]:
        """JSON description stored in the compressed manifest (paths made absolute)."""
        d: dict[str, Any] = {"kind": self.kind, "missing": self.missing}
        if self.kind == "cooccurrence":
            d.update(dim=self.dim, window=self.window)
        else:
            d["path"] = str(Path(self.path).resolve())  # type: ignore[arg-type]
            if self.kind == "file" and Path(self.path).suffix.lower() == ".npy":  # type: ignore[arg-type]
                d["ids_path"] = str(_ids_path_for(self).resolve())
        return d


@dataclass
class ItemEmbeddingTable:
    """A validated item table: ``table`` float32 ``[num_items + 1, d]`` (row 0 zeros) and its provenance."""

    table: np.ndarray
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    def sha256(self) -> str:
        """Hash of the table's bytes: a resumed run checks it is clustering the same embeddings."""
        return hashlib.sha256(np.ascontiguousarray(self.table).tobytes()).hexdigest()


# ---- readers --------------------------------------------------------------------------------------------


def _ids_path_for(source: EmbeddingSource) -> Path:
    if source.ids_path:
        return Path(source.ids_path)
    return Path(source.path).with_suffix(".ids.npy")  # type: ignore[arg-type]


def _as_matrix(values: Any, file: str) -> np.ndarray:
    matrix = np.asarray(values)
    if matrix.ndim != 2 or matrix.shape[1] < 1 or matrix.dtype.kind not in "fiu":
        raise EmbeddingError(f"{file}: expected a numeric matrix [items, dim], found dtype {matrix.dtype} "
                             f"and shape {matrix.shape}")
    return matrix.astype(np.float32, copy=False)


def load_embedding_file(path: str | os.PathLike, ids_path: str | os.PathLike | None = None
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Read an embedding file keyed by item id.

    Args:
        path: ``.npy`` float matrix ``[n, d]`` or ``.parquet``. Parquet: key column ``item_id`` (int, dense
            dataset ids) or ``raw_item_id`` (string); vector in a list column ``embedding``, else every other
            numeric column in file order (``e0``, ``e1``, ...).
        ids_path: for ``.npy``: a 1-D ``.npy`` of ``n`` ids, ints (dense) or strings (raw); default
            ``<name>.ids.npy`` beside ``path``.
    Returns:
        ``(ids, matrix)``: ids ``[n]`` (int64 dense or str raw ids) and float32 ``[n, d]``.
    Raises:
        EmbeddingError: unreadable file, ragged vectors, or ids and rows of different lengths.
    """
    path = Path(path)
    if not path.exists():
        raise EmbeddingError(f"{path}: no such embedding file")
    if path.suffix.lower() == ".npy":
        ids_file = Path(ids_path) if ids_path else path.with_suffix(".ids.npy")
        if not ids_file.exists():
            raise EmbeddingError(f"{ids_file}: no such ids file for the embedding matrix {path} "
                                 "(pass --embedding-ids, or save the ids as <name>.ids.npy beside it)")
        from twinv2._io import load_npy

        matrix = _as_matrix(load_npy(path), str(path))
        ids = load_npy(ids_file)
        if ids.ndim != 1 or ids.dtype.kind not in "iuU":
            raise EmbeddingError(f"{ids_file}: expected a 1-D array of int or string ids, found dtype "
                                 f"{ids.dtype} and shape {ids.shape}")
        if len(ids) != len(matrix):
            raise EmbeddingError(f"{ids_file}: dimension mismatch: {len(ids)} ids for {len(matrix)} "
                                 f"embedding rows in {path}")
        return (ids.astype(np.int64) if ids.dtype.kind in "iu" else ids.astype(str)), matrix
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise EmbeddingError(f"{path}: unreadable Parquet file ({str(exc).splitlines()[0]})") from exc
    if "item_id" in table.column_names:
        key = "item_id"
        ids = table.column(key).to_numpy(zero_copy_only=False)
        if ids.dtype.kind not in "iu":
            raise EmbeddingError(f"{path}: column 'item_id': expected integer dense ids, found {ids.dtype}")
        ids = ids.astype(np.int64)
    elif "raw_item_id" in table.column_names:
        key = "raw_item_id"
        ids = np.asarray(table.column(key).to_pylist(), dtype=str)
    else:
        raise EmbeddingError(f"{path}: expected a key column 'item_id' (dense ids) or 'raw_item_id'")
    if "embedding" in table.column_names:
        col = table.column("embedding")
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)
                or pa.types.is_fixed_size_list(col.type)):
            raise EmbeddingError(f"{path}: column 'embedding': expected a list of floats, found {col.type}")
        if col.null_count:
            raise EmbeddingError(f"{path}: column 'embedding': {col.null_count} rows have no vector")
        col = col.combine_chunks()
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(np.unique(lengths)) > 1:
            raise EmbeddingError(f"{path}: column 'embedding': dimension mismatch: vectors of lengths "
                                 f"{_examples(np.unique(lengths))}")
        dim = int(lengths[0]) if len(lengths) else 1
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
        matrix = _as_matrix(flat.reshape(len(lengths), dim), str(path))
    else:
        names = [n for n in table.column_names
                 if n not in ("item_id", "raw_item_id") and (pa.types.is_floating(table.schema.field(n).type)
                                                            or pa.types.is_integer(table.schema.field(n).type))]
        if not names:
            raise EmbeddingError(f"{path}: expected a list column 'embedding' or numeric vector columns")
        if any(table.column(n).null_count for n in names):
            raise EmbeddingError(f"{path}: vector columns {names[:_MAX_EXAMPLES]} hold nulls")
        matrix = _as_matrix(np.stack([table.column(n).to_numpy() for n in names], axis=1), str(path))
    return ids, matrix


def _read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    from twinv2._io import load_torch_dict

    obj = load_torch_dict(path)
    if CHECKPOINT_KEY not in obj:
        raise CheckpointError(f"{path}: expected a dict with a top-level {CHECKPOINT_KEY!r} tensor "
                              "[num_items + 1, d]")
    return obj


def load_checkpoint_item_embeddings(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The item-id embedding table of a trained checkpoint.

    The checkpoint is a ``torch.save`` dict with a top-level key ``item_embeddings``: a float tensor
    ``[num_items + 1, d]``, row ``i`` = dense item ``i``, row 0 = padding (dropped here).

    Returns:
        ``(item_ids, matrix)``: int64 ``[num_items]`` = ``1..num_items`` and float32 ``[num_items, d]``.
    Raises:
        CheckpointError: missing file, unsafe or unreadable pickle, missing key.
        EmbeddingError: the table is not a 2-D float tensor.
    """
    return _checkpoint_rows(_read_checkpoint(path), path)


def _checkpoint_rows(obj: dict[str, Any], path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(item_ids, matrix)`` of a loaded checkpoint dict (see :func:`load_checkpoint_item_embeddings`)."""
    import torch

    table = obj[CHECKPOINT_KEY]
    if not isinstance(table, torch.Tensor) or table.ndim != 2 or not table.is_floating_point() or len(table) < 2:
        found = f"{tuple(table.shape)} {table.dtype}" if isinstance(table, torch.Tensor) else type(table).__name__
        raise EmbeddingError(f"{path}: {CHECKPOINT_KEY!r}: expected a float tensor [num_items + 1, d], "
                             f"found {found}")
    matrix = table.detach().to(torch.float32).numpy()[1:]
    return np.arange(1, len(matrix) + 1, dtype=np.int64), np.ascontiguousarray(matrix)


# ---- training-free default: PPMI of co-occurrence + randomized SVD ------------------------------------
#
# The co-occurrence matrix has up to `window` distinct item pairs per behavior (about 4 with window 5 on the
# synthetic data), so it grows with the log, not with the catalogue: it is built and read in bounded memory.
# Pairs are spilled to a temporary folder in buckets of their smaller item id (`lo`), each bucket is
# aggregated alone, and the randomized SVD multiplies by the matrix streaming the buckets' positive entries.
# Every floating-point operation is the one of the in-memory formulation, in the same order, so the table is
# bit-identical to it whatever the chunking and the memory budget (tested).

DEFAULT_COOCCURRENCE_MEMORY = 1 << 29
"""Working-set bytes of the co-occurrence stage: half for the bucket of pairs being aggregated, half for the
positive entries kept in memory while they fit (beyond, they are read back from disk); the rest is
O(items) plus one chunk of events."""
_BYTES_PER_RAW_PAIR = 96    # aggregating one bucket: per spilled (pair, lag) entry, arrays and sort buffers
_BYTES_PER_PAIR = 16        # a positive entry: lo, hi (int32) and PPMI (float64)


def history_chunks(histories: Histories, before_ts: int | None = None, rows: int = DEFAULT_CHUNK_ROWS
                   ) -> EventChunks:
    """:data:`EventChunks` over in-memory CSR histories: users in ranges of about ``rows`` behaviors, each
    user's behaviors strictly before ``before_ts`` (all of them when None)."""
    h = histories

    def one_pass() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for u0, u1 in user_ranges(h.offsets, rows):
            lo, hi = int(h.offsets[u0]), int(h.offsets[u1])
            items = h.item_id[lo:hi]
            users = np.repeat(np.arange(u0, u1, dtype=np.int64), np.diff(h.offsets[u0:u1 + 1]))
            if before_ts is not None:
                keep = h.ts[lo:hi] < before_ts
                items, users = items[keep], users[keep]
            yield np.asarray(items, dtype=np.int64), users

    return one_pass


def _lag_pairs(items: np.ndarray, users: np.ndarray, lag: int, base: np.int64) -> np.ndarray:
    """Keys ``lo * base + hi`` of the distinct-item pairs ``lag`` behaviors apart within one user."""
    a, b = items[:-lag], items[lag:]
    keep = (users[:-lag] == users[lag:]) & (a != b)
    return np.minimum(a, b)[keep] * base + np.maximum(a, b)[keep]


def _bucket_bounds(freq: np.ndarray, buckets: int) -> np.ndarray:
    """Item-id bounds ``[0 = b_0 < ... < b_B = num_items + 1]`` splitting the pairs by their smaller item into
    about equal buckets: item ``i`` is the smaller of a pair with probability ``p_i (2 P(j > i) + p_i)``."""
    n1 = len(freq)
    if buckets <= 1 or freq.sum() == 0:
        return np.array([0, n1], np.int64)
    p = freq / freq.sum()
    above = p[::-1].cumsum()[::-1] - p                      # P(j > i)
    mass = np.cumsum(p * (2 * above + p))
    cuts = np.searchsorted(mass, mass[-1] * np.arange(1, buckets) / buckets, side="right")
    return np.unique(np.concatenate([[0], np.clip(cuts, 1, n1 - 1), [n1]])).astype(np.int64)


@numba.njit(cache=True)
def _accumulate(total: np.ndarray, index: np.ndarray, weights: np.ndarray) -> None:
    """``total[index[p]] += weights[p]`` in order of ``p`` (what ``np.bincount`` does, across calls)."""
    for p in range(len(index)):
        total[index[p]] += weights[p]


@numba.njit(cache=True)
def _pairs_matmul_into(lo: np.ndarray, hi: np.ndarray, values: np.ndarray, compact: np.ndarray,
                       dense: np.ndarray, out: np.ndarray) -> None:
    """``out += M @ dense`` for the symmetric matrix M holding each upper-triangle entry ``(lo, hi)`` and its
    mirror, rows and columns renumbered by ``compact`` (no input validation).

    Entries come sorted by ``(lo, hi)``, so each row ``r`` receives its terms in ascending column order (first
    the pairs ``(c, r)``, ``c < r``, then ``(r, c)``, ``c > r``): the row-by-row sums of a column-sorted CSR
    product, operation for operation.
    """
    k = dense.shape[1]
    for p in range(len(lo)):
        a, b, v = compact[lo[p]], compact[hi[p]], values[p]
        for c in range(k):
            out[b, c] += v * dense[a, c]
        for c in range(k):
            out[a, c] += v * dense[b, c]


class _PairStore:
    """The co-occurrence pairs of a log, spilled by bucket to a temporary folder (see the section comment)."""

    def __init__(self, folder: Path, num_items: int, window: int, memory_bytes: int):
        self.folder, self.num_items, self.window, self.memory = folder, num_items, window, memory_bytes
        self.base = np.int64(num_items + 1)
        self.bounds = np.array([0, num_items + 1], np.int64)
        self.num_pairs = 0
        self.positive: list[tuple[np.ndarray, np.ndarray, np.ndarray] | Path] = []
        self.positive_entries = 0

    def _raw(self, bucket: int, lag: int) -> Path:
        return self.folder / f"raw-{bucket:05d}-{lag}.bin"

    def spill(self, chunks: EventChunks) -> None:
        """Pass 1 sizes the buckets from the item frequencies, pass 2 writes each chunk's pairs of each lag
        (deduplicated with counts) to its buckets."""
        freq = np.zeros(self.num_items + 1, np.int64)
        for items, _ in chunks():
            freq += np.bincount(items, minlength=self.num_items + 1)
        raw_bytes = self.window * int(freq.sum()) * _BYTES_PER_RAW_PAIR
        self.bounds = _bucket_bounds(freq, -(-raw_bytes // max(self.memory // 2, 1)))
        key_bounds = self.bounds[1:-1] * self.base
        for items, users in chunks():
            for lag in range(1, self.window + 1):
                if lag >= len(items):
                    break
                uniq, counts = np.unique(_lag_pairs(items, users, lag, self.base), return_counts=True)
                cuts = np.concatenate([[0], np.searchsorted(uniq, key_bounds), [len(uniq)]])
                for bucket in np.flatnonzero(np.diff(cuts)):
                    s, e = cuts[bucket], cuts[bucket + 1]
                    with open(self._raw(int(bucket), lag), "ab") as fh:
                        np.stack([uniq[s:e], counts[s:e]], axis=1).tofile(fh)

    def _bucket_weights(self, bucket: int) -> tuple[np.ndarray, np.ndarray]:
        """Distinct pairs of one bucket (sorted keys) and their weights ``sum over lags of count / lag``."""
        keys, weights = [], []
        for lag in range(1, self.window + 1):
            file = self._raw(bucket, lag)
            if not file.exists():
                continue
            raw = np.fromfile(file, np.int64).reshape(-1, 2)
            file.unlink()
            uniq, inverse = np.unique(raw[:, 0], return_inverse=True)
            counts = np.bincount(inverse, weights=raw[:, 1])  # integers, exact in float64
            del raw, inverse
            keys.append(uniq)
            weights.append(counts / lag)
        if not keys:
            return np.zeros(0, np.int64), np.zeros(0)
        uniq, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        return uniq, np.bincount(inverse, weights=np.concatenate(weights))

    def aggregate(self) -> np.ndarray:
        """PPMI of every pair, keeping the positive entries (in memory while they fit the budget, else on
        disk). Returns the items with at least one positive entry, bool ``[num_items + 1]``."""
        n1 = self.num_items + 1
        total_lo, total_hi = np.zeros(n1), np.zeros(n1)
        buckets = len(self.bounds) - 1
        for bucket in range(buckets):
            uniq, w = self._bucket_weights(bucket)
            self.num_pairs += len(uniq)
            _accumulate(total_lo, uniq // self.base, w)
            _accumulate(total_hi, uniq % self.base, w)
            np.save(self.folder / f"keys-{bucket:05d}.npy", uniq)
            np.save(self.folder / f"weights-{bucket:05d}.npy", w)
        item_total = total_lo + total_hi
        grand_total = item_total.sum()
        learned = np.zeros(n1, bool)
        keep_in_memory = True
        for bucket in range(buckets):
            files = self.folder / f"keys-{bucket:05d}.npy", self.folder / f"weights-{bucket:05d}.npy"
            uniq, w = np.load(files[0]), np.load(files[1])
            for file in files:
                file.unlink()
            lo, hi = uniq // self.base, uniq % self.base
            pmi = np.log(w * grand_total / (item_total[lo] * item_total[hi]))
            pos = pmi > 0
            index = np.int32 if n1 <= np.iinfo(np.int32).max else np.int64
            lo, hi, pmi = lo[pos].astype(index), hi[pos].astype(index), pmi[pos]
            learned[lo] = learned[hi] = True
            self.positive_entries += len(pmi)
            keep_in_memory = keep_in_memory and self.positive_entries * _BYTES_PER_PAIR <= self.memory // 2
            if keep_in_memory:
                self.positive.append((lo, hi, pmi))
                continue
            for i, held in enumerate(self.positive):  # over the budget: everything goes to disk
                if not isinstance(held, Path):
                    self.positive[i] = self._save_positive(i, held)
            self.positive.append(self._save_positive(bucket, (lo, hi, pmi)))
        return learned

    def _save_positive(self, bucket: int, entries: tuple[np.ndarray, np.ndarray, np.ndarray]) -> Path:
        file = self.folder / f"positive-{bucket:05d}.npz"
        np.savez(file, lo=entries[0], hi=entries[1], v=entries[2])
        return file

    def matmul(self, compact: np.ndarray, dense: np.ndarray) -> np.ndarray:
        """float64 ``[n, k]`` = M @ ``dense`` (``n`` = learned items, numbered by ``compact``)."""
        out = np.zeros(dense.shape)
        for held in self.positive:
            if isinstance(held, Path):
                with np.load(held) as f:
                    _pairs_matmul_into(f["lo"], f["hi"], f["v"], compact, dense, out)
            else:
                _pairs_matmul_into(*held, compact, dense, out)
        return out


def cooccurrence_embeddings(histories: Histories, num_items: int, *, dim: int = 32, window: int = 5,
                            before_ts: int | None = None, seed: int = 0, power_iterations: int = 4,
                            memory_bytes: int = DEFAULT_COOCCURRENCE_MEMORY, work_dir: str | os.PathLike | None = None
                            ) -> tuple[np.ndarray, np.ndarray, int]:
    """Training-free item embeddings from the events: PPMI of co-occurrence, truncated SVD.

    Two distinct items co-occur when at most ``window`` behaviors apart in one user's time-ordered history
    (weight 1/distance). Positive PMI ``max(0, log(c_ab * T / (c_a * c_b)))`` is factorised by a randomized
    SVD (Halko et al. 2011) into ``U_d sqrt(S_d)``; component signs are fixed so the largest entry is
    positive. Items without a positive PMI entry get a hashed Gaussian vector (deterministic in
    ``(seed, item_id)``) scaled to the median learned norm.

    Args:
        histories: CSR histories; only behaviors strictly before ``before_ts`` are used (no leakage).
        num_items: items are ``1..num_items``.
        memory_bytes, work_dir: see :func:`cooccurrence_embeddings_from_chunks`.
    Returns:
        ``(item_ids, matrix, num_learned)``: int64 ``[num_items]``, float32 ``[num_items, dim]`` and how many
        items got a learned (not hashed) vector.
    """
    return cooccurrence_embeddings_from_chunks(history_chunks(histories, before_ts), num_items, dim=dim,
                                               window=window, seed=seed, power_iterations=power_iterations,
                                               memory_bytes=memory_bytes, work_dir=work_dir)


def cooccurrence_embeddings_from_chunks(chunks: EventChunks, num_items: int, *, dim: int = 32, window: int = 5,
                                        seed: int = 0, power_iterations: int = 4,
                                        memory_bytes: int = DEFAULT_COOCCURRENCE_MEMORY,
                                        work_dir: str | os.PathLike | None = None
                                        ) -> tuple[np.ndarray, np.ndarray, int]:
    """:func:`cooccurrence_embeddings` over a log read in chunks (two passes of ``chunks``).

    Memory is O(items x dim) plus about ``memory_bytes`` for the pairs (and the largest chunk); pairs over
    that budget wait in a temporary folder under ``work_dir`` (default: the system's, ``TMPDIR``), about 50
    bytes per distinct co-occurring pair at its fullest, removed on return. The table is bit-identical
    whatever the chunking and the budget.
    """
    if memory_bytes < 1:
        raise ConfigError(f"memory_bytes={memory_bytes}: expected a positive number of bytes")
    matrix = np.zeros((num_items + 1, dim), np.float32)
    with tempfile.TemporaryDirectory(prefix="twinv2-cooccurrence-", dir=work_dir) as folder:
        store = _PairStore(Path(folder), num_items, window, memory_bytes)
        store.spill(chunks)
        learned = store.aggregate()
        active = np.flatnonzero(learned)
        if len(active):
            compact = np.full(num_items + 1, -1, np.int64)
            compact[active] = np.arange(len(active))
            vectors = _randomized_embedding(lambda dense: store.matmul(compact, dense), len(active), dim, seed,
                                            power_iterations)
            matrix[active, : vectors.shape[1]] = vectors
    fallback = np.flatnonzero(~learned[1:]) + 1
    if len(fallback):
        norms = np.linalg.norm(matrix[learned], axis=1)
        scale = float(np.median(norms)) if len(norms) else 1.0
        matrix[fallback] = hashed_gaussian(fallback, dim, seed) * np.float32(scale / np.sqrt(dim))
    return np.arange(1, num_items + 1, dtype=np.int64), matrix[1:], int(learned.sum())


@numba.njit(cache=True)
def _orthonormal_columns(y: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the columns of float64 ``[n, k]`` by modified Gram-Schmidt, run twice.

    Hand-written instead of LAPACK QR: multi-threaded BLAS on tall, thin matrices is slow on a busy
    machine (measured 40x slower with two OpenBLAS threads under load) for a few million flops of work.
    """
    n, k = y.shape
    qt = np.ascontiguousarray(y.T)  # [k, n]: one basis vector per row
    for _ in range(2):  # a second pass restores orthogonality lost to rounding ("twice is enough")
        for j in range(k):
            for i in range(j):
                dot = 0.0
                for r in range(n):
                    dot += qt[i, r] * qt[j, r]
                for r in range(n):
                    qt[j, r] -= dot * qt[i, r]
            norm = 0.0
            for r in range(n):
                norm += qt[j, r] * qt[j, r]
            norm = np.sqrt(norm)
            if norm > 1e-300:
                for r in range(n):
                    qt[j, r] /= norm
    return np.ascontiguousarray(qt.T)


@numba.njit(cache=True)
def _gram(y: np.ndarray) -> np.ndarray:
    """float64 ``[k, k]`` = ``y.T @ y`` for ``y`` float64 ``[n, k]``."""
    n, k = y.shape
    g = np.zeros((k, k))
    for r in range(n):
        for a in range(k):
            ya = y[r, a]
            for b in range(a, k):
                g[a, b] += ya * y[r, b]
    for a in range(k):
        for b in range(a):
            g[a, b] = g[b, a]
    return g


@numba.njit(cache=True)
def _project(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float64 ``[n, d]`` = ``q @ v`` for ``q`` ``[n, k]`` and a small ``v`` ``[k, d]``."""
    n, k = q.shape
    d = v.shape[1]
    out = np.zeros((n, d))
    for r in range(n):
        for j in range(k):
            qj = q[r, j]
            for c in range(d):
                out[r, c] += qj * v[j, c]
    return out


def _randomized_embedding(matmul: Callable[[np.ndarray], np.ndarray], n: int, dim: int, seed: int,
                          power_iterations: int) -> np.ndarray:
    """``U_d sqrt(S_d)`` of a symmetric matrix M ``[n, n]`` given as ``matmul(x) = M @ x``, by randomized
    range finding.

    Q spans M's dominant subspace after power iterations; with ``B = Q^T M`` (``[k, n]``), the SVD
    ``B = U_b S V^T`` follows from the small eigenproblem ``B B^T = (MQ)^T (MQ) = U_b S^2 U_b^T``.
    Returns float32 ``[n, min(dim, k)]``.
    """
    k = min(dim + 10, n)
    q = np.random.default_rng(seed).standard_normal((n, k))
    for _ in range(power_iterations + 1):
        q = _orthonormal_columns(matmul(q))
    evals, evecs = np.linalg.eigh(_gram(matmul(q)))  # ascending
    d = min(dim, k)
    top = np.argsort(evals)[::-1][:d]
    s = np.sqrt(np.maximum(evals[top], 0.0))
    u = _project(q, np.ascontiguousarray(evecs[:, top]))         # [n, d]
    flip = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(d)])
    flip[flip == 0] = 1.0
    return (u * flip * np.sqrt(s)).astype(np.float32)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hashed_gaussian(item_ids: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """float32 ``[n, dim]`` standard normal vectors, each a pure function of ``(seed, item_id)``.

    Used for items without a learned embedding: the vector of an item does not depend on which other items
    are missing, on the order of ``item_ids``, or on the machine.
    """
    ids = np.asarray(item_ids, dtype=np.int64).astype(np.uint64)[:, None]
    comp = np.arange(dim, dtype=np.uint64)[None, :] * np.uint64(2)
    base = _splitmix64(_splitmix64(np.full(1, seed & 0xFFFFFFFFFFFFFFFF, np.uint64)) ^ ids)  # [n, 1]
    u1 = ((_splitmix64(base ^ comp) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    u2 = ((_splitmix64(base ^ (comp + np.uint64(1))) >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    return (np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)).astype(np.float32)


# ---- the validated table --------------------------------------------------------------------------------


def _examples(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:_MAX_EXAMPLES].tolist())
    return shown + (", ..." if len(values) > _MAX_EXAMPLES else "")


def _raw_id_lookup(dataset: Dataset, file: str) -> dict[str, int]:
    items_file = dataset.path / "items.parquet"
    if "raw_item_id" not in pq.read_schema(items_file).names:
        raise EmbeddingError(f"{file}: embeddings keyed by raw_item_id, but {items_file} has no raw_item_id "
                             "column; key them by the dense item_id instead")
    t = pq.read_table(items_file, columns=["item_id", "raw_item_id"])
    return dict(zip(t.column("raw_item_id").to_pylist(), t.column("item_id").to_pylist(), strict=True))


def table_from_rows(ids: np.ndarray, matrix: np.ndarray, dataset: Dataset, *, missing: str, seed: int,
                    normalize: bool, file: str, used: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Place keyed rows into a validated ``[num_items + 1, d]`` table.

    Checks (each an :class:`EmbeddingError` naming ``file`` with a count and example ids): finite values;
    dense ids within ``0..num_items`` (0, the padding row, is ignored) and unique; every item occurring in
    the events has a row (unless ``missing="random"``); with ``normalize``, no zero vector for those items.
    Rows of items nobody interacted with are filled with hashed Gaussian vectors. ``used`` (bool
    ``[num_items + 1]``, the items occurring in the events) is read from ``dataset.histories`` when None.
    """
    num_items = dataset.manifest.num_items
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise EmbeddingError(f"{file}: {int(bad.sum())} embeddings hold NaN or infinity, e.g. item ids "
                             f"{_examples(ids[bad])}")
    info: dict[str, Any] = {}
    if ids.dtype.kind == "U":
        lookup = _raw_id_lookup(dataset, file)
        dense = np.array([lookup.get(r, -1) for r in ids.tolist()], dtype=np.int64)
        info["unknown_raw_ids_skipped"] = int((dense < 0).sum())
        matrix, ids = matrix[dense >= 0], dense[dense >= 0]
    out_of_range = (ids < 0) | (ids > num_items)
    if out_of_range.any():
        raise EmbeddingError(f"{file}: {int(out_of_range.sum())} item ids outside the dataset's 1..{num_items}, "
                             f"e.g. {_examples(ids[out_of_range])} (are the embeddings keyed by another "
                             "dataset's ids?)")
    matrix, ids = matrix[ids > 0], ids[ids > 0]
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise EmbeddingError(f"{file}: {int((counts > 1).sum())} item ids appear more than once, e.g. "
                             f"{_examples(uniq[counts > 1])}")
    dim = matrix.shape[1]
    table = np.zeros((num_items + 1, dim), np.float32)
    provided = np.zeros(num_items + 1, bool)
    table[ids], provided[ids] = matrix, True
    if used is None:
        used = np.zeros(num_items + 1, bool)
        used[dataset.histories.item_id] = True
    missing_used = np.flatnonzero(used & ~provided)
    if len(missing_used) and missing == "error":
        raise EmbeddingError(f"{file}: {len(missing_used)} of the {int(used.sum())} items that occur in the "
                             f"events have no embedding, e.g. item ids {_examples(missing_used)}; use "
                             "--missing-embedding random to give them deterministic random vectors")
    fill = np.flatnonzero(~provided[1:]) + 1
    if len(fill):
        norms = np.linalg.norm(matrix, axis=1)
        scale = float(np.median(norms)) if len(norms) else 1.0
        table[fill] = hashed_gaussian(fill, dim, seed) * np.float32(scale / np.sqrt(dim))
    if normalize:
        zero = np.flatnonzero(used & (np.abs(table).max(axis=1) == 0))
        if len(zero):
            raise EmbeddingError(f"{file}: {len(zero)} items that occur in the events have an all-zero "
                                 f"embedding, which cannot be L2-normalised, e.g. item ids {_examples(zero)}")
    info.update(provided=int(provided.sum()), missing_filled=len(missing_used))
    return table, info


def _check_checkpoint_dataset(obj: dict[str, Any], dataset: Dataset, path: str) -> None:
    """A checkpoint's embeddings are keyed by the dense item ids of the dataset it was trained on: refuse
    one trained on another dataset (the full identity when recorded, else the schema fingerprint)."""
    from twinv2.data.store import dataset_identity

    recorded = obj.get("dataset_identity")
    if isinstance(recorded, dict):
        found = dataset_identity(dataset)
        for key, expected in recorded.items():
            if key in found and found[key] != expected:
                raise CheckpointError(f"{path}: checkpoint trained on another dataset ({obj.get('dataset_path')}): "
                                      f"'{key}' is {expected!r} there, {found[key]!r} in {dataset.path}")
    ckpt_fp = obj.get("manifest_fingerprint")
    if isinstance(ckpt_fp, str) and ckpt_fp != dataset.manifest.fingerprint():
        raise CheckpointError(f"{path}: checkpoint trained on another dataset: manifest fingerprint {ckpt_fp}, "
                              f"this dataset has {dataset.manifest.fingerprint()}")


def _check_checkpoint_window(obj: dict[str, Any], before_ts: int | None, source: EmbeddingSource) -> int | None:
    """The end of the checkpoint's train window (exclusive; ``None`` when it records no split), after
    refusing, unless ``source.allow_leakage``, one that reaches past the snapshot ``before_ts``.

    The item embeddings learned from every train sample up to that end (targets, labels and the sequences
    before them), so clustering pre-snapshot behaviors by them brings post-snapshot information into the
    virtual items that feed training samples from the snapshot on.
    """
    split = obj.get("split")
    if not isinstance(split, dict) or "valid_start_ts" not in split:
        return None
    trained_until = int(split["valid_start_ts"])
    if before_ts is not None and trained_until > before_ts and not source.allow_leakage:
        raise CompressionError(
            f"{source.path}: the checkpoint's train window ends at {trained_until}, after the snapshot "
            f"{before_ts}: its embeddings learned from behaviors and labels after the snapshot (leakage); "
            f"compress at a snapshot >= {trained_until}, use embeddings learned before {before_ts}, or pass "
            "--allow-embedding-leakage (recorded in the compressed manifest)")
    return trained_until


def item_embedding_table(source: EmbeddingSource, dataset: Dataset, *, before_ts: int | None, seed: int,
                         normalize: bool = True, chunks: EventChunks | None = None,
                         used: np.ndarray | None = None, memory_bytes: int = DEFAULT_COOCCURRENCE_MEMORY,
                         work_dir: str | os.PathLike | None = None) -> ItemEmbeddingTable:
    """Build and validate the item table the job clusters with.

    Args:
        source: the embedding source.
        dataset: the loaded dataset (its items define the table rows; its events the required items).
        before_ts: the snapshot; the ``cooccurrence`` default learns only from behaviors before it.
        seed: seeds the randomized SVD and the hashed fallback vectors.
        normalize: whether the clustering L2-normalises (then zero vectors are an error).
        chunks, used: for a dataset whose events are not in memory (``dataset.histories`` then only needs
            its offsets): the behaviors before ``before_ts`` as :data:`EventChunks`, and the items occurring
            in the events, bool ``[num_items + 1]``. Both default to reading ``dataset.histories``.
        memory_bytes, work_dir: the co-occurrence default's budget and temporary folder
            (:func:`cooccurrence_embeddings_from_chunks`).
    Returns:
        :class:`ItemEmbeddingTable` with ``table`` float32 ``[num_items + 1, d]``.
    Raises:
        EmbeddingError, CheckpointError: see the module docstring. Nothing is written.
        CompressionError: a checkpoint trained past ``before_ts`` without ``source.allow_leakage``.
    """
    desc = source.describe()
    if source.kind == "cooccurrence":
        ids, matrix, learned = cooccurrence_embeddings_from_chunks(
            chunks if chunks is not None else history_chunks(dataset.histories, before_ts),
            dataset.manifest.num_items, dim=source.dim, window=source.window, seed=seed,
            memory_bytes=memory_bytes, work_dir=work_dir)
        desc.update(before_ts=before_ts, items_learned=learned)
        file = "co-occurrence embeddings"
    elif source.kind == "checkpoint":
        obj = _read_checkpoint(source.path)  # type: ignore[arg-type]
        _check_checkpoint_dataset(obj, dataset, str(source.path))
        trained_until = _check_checkpoint_window(obj, before_ts, source)
        desc.update(trained_until_ts=trained_until, leakage_allowed=source.allow_leakage)
        ids, matrix = _checkpoint_rows(obj, source.path)  # type: ignore[arg-type]
        if len(ids) != dataset.manifest.num_items:
            raise EmbeddingError(f"{source.path}: dimension mismatch: {CHECKPOINT_KEY!r} has rows for "
                                 f"{len(ids)} items (+ padding), the dataset has {dataset.manifest.num_items}")
        file = str(source.path)
    else:
        ids, matrix = load_embedding_file(source.path, _ids_path_for(source))  # type: ignore[arg-type]
        file = str(source.path)
    table, info = table_from_rows(ids, matrix, dataset, missing=source.missing, seed=seed, normalize=normalize,
                                  file=file, used=used)
    desc.update(info, dim=int(table.shape[1]))
    return ItemEmbeddingTable(table=table, source=desc)


def write_embedding_file(path: str | os.PathLike, item_ids: np.ndarray, matrix: np.ndarray,
                         raw_item_ids: np.ndarray | None = None) -> Path:
    """Write embeddings in the ``file`` source format, atomically.

    ``.parquet``: columns ``item_id`` (int64), optional ``raw_item_id`` (string) and ``embedding``
    (list<float32>). ``.npy``: the float32 matrix ``[n, d]`` plus ``<name>.ids.npy`` (int64 ``[n]``), written
    as one unit (:func:`twinv2._io.atomic_files`).
    """
    from twinv2._io import atomic_file, atomic_files

    path = Path(path)
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    if path.suffix.lower() == ".npy":
        # One unit: both files are written to temporaries first, then renamed together (a failure leaves
        # the previous pair, never new ids beside an old matrix or the reverse).
        with atomic_files(path.with_suffix(".ids.npy"), path) as (ids_tmp, matrix_tmp):
            with open(ids_tmp, "wb") as fh:
                np.save(fh, item_ids)
            with open(matrix_tmp, "wb") as fh:
                np.save(fh, matrix)
        return path
    if path.suffix.lower() != ".parquet":
        raise ConfigError(f"{path}: embedding files end in .parquet or .npy")
    n, d = matrix.shape
    columns: dict[str, pa.Array] = {"item_id": pa.array(item_ids, pa.int64())}
    if raw_item_ids is not None:
        columns["raw_item_id"] = pa.array(np.asarray(raw_item_ids).astype(str).tolist(), pa.string())
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * np.int32(d))
    columns["embedding"] = pa.ListArray.from_arrays(offsets, pa.array(matrix.reshape(-1), pa.float32()))
    with atomic_file(path, "wb") as fh:
        pq.write_table(pa.table(columns), fh, compression="zstd")
    return path


def export_cooccurrence_embeddings(dataset: str | os.PathLike, out: str | os.PathLike, *, dim: int = 32,
                                   window: int = 5, before_ts: int | None = None, seed: int = 0
                                   ) -> dict[str, Any]:
    """Learn the co-occurrence default embeddings of a dataset and write them with
    :func:`write_embedding_file` (``raw_item_id`` included in Parquet when the dataset has it).

    Returns ``{"path", "items", "items_learned", "dim"}``.
    """
    EmbeddingSource("cooccurrence", dim=dim, window=window)  # validates dim and window
    ds, chunks = open_event_chunks(dataset, before_ts)
    ids, matrix, learned = cooccurrence_embeddings_from_chunks(chunks, ds.manifest.num_items, dim=dim,
                                                               window=window, seed=seed)
    raw = None
    items_file = ds.path / "items.parquet"
    if Path(out).suffix.lower() == ".parquet" and "raw_item_id" in pq.read_schema(items_file).names:
        t = pq.read_table(items_file, columns=["item_id", "raw_item_id"]).sort_by("item_id")
        raw = np.asarray(t.column("raw_item_id").to_pylist(), dtype=str)
    path = write_embedding_file(out, ids, matrix, raw_item_ids=raw)
    return {"path": str(path), "items": len(ids), "items_learned": learned, "dim": dim}

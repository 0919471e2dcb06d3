"""What the serving store holds per user, and its byte encoding.

A user's serving state (the virtual items of DESIGN §2.2 plus the raw behaviors since they were built) is:

- ``snapshot_ts``: behaviors strictly before it are summarised by the user's virtual items (the compression
  snapshot, advanced when live behaviors are folded in);
- ``clusters``: the virtual items, as the columns of a compressed part (``rep_item_id``, ``cluster_size``,
  ``mean_ts``, ``mean_<feature>``, ...), most recent last; ``centroid`` is kept apart (only folding reads it);
- ``events``: recent raw behaviors, oldest first: those at or after ``snapshot_ts`` (the raw part of the
  long sequence) and a few before it (the short-term context).

Arrays travel as one self-describing blob (:func:`encode_arrays`): a JSON header naming each array's dtype,
shape and byte range, then the raw bytes. It is safe to decode (no pickle) and costs one copy.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["RawEvents", "UserState", "decode_arrays", "encode_arrays"]

_HEADER = struct.Struct("<I")  # length of the JSON header in bytes


def encode_arrays(arrays: dict[str, np.ndarray]) -> bytes:
    """Pack named numpy arrays into bytes: a 4-byte header length, a JSON header, then the data."""
    header, chunks, offset = {}, [], 0
    for name, values in arrays.items():
        a = np.ascontiguousarray(values)
        header[name] = [a.dtype.str, list(a.shape), offset, a.nbytes]
        chunks.append(a.tobytes())
        offset += a.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    return _HEADER.pack(len(head)) + head + b"".join(chunks)


def decode_arrays(blob: bytes) -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_arrays` (the arrays are read-only views of ``blob``)."""
    (size,) = _HEADER.unpack_from(blob, 0)
    header = json.loads(blob[_HEADER.size:_HEADER.size + size])
    base = _HEADER.size + size
    out = {}
    for name, (dtype, shape, offset, nbytes) in header.items():
        out[name] = np.frombuffer(blob, dtype=np.dtype(dtype), count=nbytes // max(np.dtype(dtype).itemsize, 1),
                                  offset=base + offset).reshape(shape)
    return out


@dataclass
class RawEvents:
    """Raw behaviors of one user, oldest first (ties in arrival order).

    Attributes:
        item_id, ts: int64 ``[n]``; label: int8 ``[n]``; cross: float32 ``[n]`` per cross feature name.
    """

    item_id: np.ndarray
    ts: np.ndarray
    label: np.ndarray
    cross: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.item_id)

    @classmethod
    def empty(cls, cross_names: list[str]) -> RawEvents:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8),
                   {n: np.zeros(0, np.float32) for n in cross_names})

    def take(self, index: np.ndarray) -> RawEvents:
        """The events at ``index`` (int array or boolean mask)."""
        return RawEvents(self.item_id[index], self.ts[index], self.label[index],
                         {n: v[index] for n, v in self.cross.items()})

    @classmethod
    def concat(cls, parts: list[RawEvents]) -> RawEvents:
        return cls(np.concatenate([p.item_id for p in parts]).astype(np.int64),
                   np.concatenate([p.ts for p in parts]).astype(np.int64),
                   np.concatenate([p.label for p in parts]).astype(np.int8),
                   {n: np.concatenate([p.cross[n] for p in parts]).astype(np.float32) for n in parts[0].cross})


@dataclass
class UserState:
    """One user's serving state (see the module docstring).

    Attributes:
        user_id: dense user id; snapshot_ts: clusters cover the behaviors before it.
        clusters: virtual-item columns (``C`` rows, most recent last, without ``centroid``).
        events: raw behaviors, oldest first.
        known: False for a user the store has never seen (cold start: no clusters, no events).
    """

    user_id: int
    snapshot_ts: int
    clusters: dict[str, np.ndarray]
    events: RawEvents
    known: bool = True

    @property
    def num_clusters(self) -> int:
        return len(self.clusters.get("rep_item_id", ()))

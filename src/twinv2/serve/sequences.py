"""A user's long and short sequences at request time, composed exactly as training composes them.

Serving does not re-implement the composition: it wraps the user's stored state in a one-user dataset
(CSR histories holding the stored raw behaviors, and a one-user compressed life cycle holding the virtual
items with the user's snapshot) and asks :class:`twinv2.data.batches.BatchBuilder` for one sample at the
request time. Whatever training does (raw L most recent for TWIN; raw behaviors since the snapshot then
virtual items for TWIN-V2, or a later composition), serving follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinv2.compress.store import CompressedLifeCycles
from twinv2.data.batches import BatchBuilder, SequenceBatch, SequenceConfig, sequence_feature_names
from twinv2.data.schema import Manifest
from twinv2.data.split import Samples
from twinv2.data.store import Dataset, Histories
from twinv2.serve.state import UserState

__all__ = ["UserSequences", "describe_positions", "user_sequences"]

_SERVING_PATH = Path("<serving>")


@dataclass
class UserSequences:
    """One user's sequences at ``request_ts``: long ``[1, L]`` and short ``[1, S]`` (most recent first)."""

    long: SequenceBatch
    short: SequenceBatch
    request_ts: int


def _one_user_dataset(state: UserState, manifest: Manifest, request_ts: int) -> Dataset:
    ev = state.events
    n = len(ev)
    time_min = int(min(int(ev.ts.min()) if n else request_ts, request_ts))
    histories = Histories(offsets=np.array([0, n], np.int64), item_id=ev.item_id.astype(np.int64),
                          ts=ev.ts.astype(np.int64), label=ev.label.astype(np.int8),
                          cross={c.name: ev.cross[c.name].astype(np.float32) for c in manifest.cross_numerics},
                          time_min=time_min)
    return Dataset(path=_SERVING_PATH, manifest=manifest, items={}, histories=histories)


def _one_user_clusters(state: UserState, manifest: Manifest) -> CompressedLifeCycles:
    c = state.clusters
    num = state.num_clusters
    if not num:  # no virtual items (a new user): empty columns of the averaged features the builder reads
        c = {name: np.zeros(0, np.float32) for name in ("first_ts", "last_ts", "mean_ts", "mean_sq_dist")}
        c.update({f"mean_{n.name}": np.zeros(0, np.float32) for n in manifest.cross_numerics})
        c.update({"rep_item_id": np.zeros(0, np.int64), "cluster_size": np.zeros(0, np.int64),
                  "completion_group": np.zeros(0, np.int8), "mean_label": np.zeros(0, np.float32)})
    means = {name[len("mean_"):]: values for name, values in c.items() if name.startswith("mean_")
             and name not in ("mean_ts", "mean_sq_dist")}
    return CompressedLifeCycles(
        offsets=np.array([0, num], np.int64), rep_item_id=c["rep_item_id"].astype(np.int64),
        cluster_size=c["cluster_size"].astype(np.int64), completion_group=c["completion_group"],
        first_ts=c["first_ts"], last_ts=c["last_ts"], mean_ts=c["mean_ts"].astype(np.float64), means=means,
        mean_sq_dist=c["mean_sq_dist"], snapshot_ts=int(state.snapshot_ts), manifest={})


def _padding(length: int, num_channels: int) -> SequenceBatch:
    """An all-padding ``[1, length]`` sequence."""
    return SequenceBatch(torch.zeros(1, length, dtype=torch.int64), torch.zeros(1, length, num_channels),
                         torch.zeros(1, length), torch.zeros(1, length, dtype=torch.bool))


def user_sequences(state: UserState, request_ts: int, manifest: Manifest,
                   sequence_config: SequenceConfig) -> UserSequences:
    """Compose ``state``'s sequences for a request at ``request_ts`` through the training batch builder.

    Args:
        state: the user's stored state (a cold-start user has no clusters and no events).
        request_ts: seconds; only behaviors strictly before it are used. Must not precede
            ``state.snapshot_ts`` for a compressed model (the caller checks and reports it).
        manifest: the model's dataset schema; sequence_config: the checkpoint's (L, S, long source).
    Returns:
        :class:`UserSequences` with long ``[1, L]`` and short ``[1, S]``.
    """
    if not len(state.events) and not state.num_clusters:
        # Nothing stored (cold start): every composition yields padding only.
        J = len(sequence_feature_names(manifest))
        return UserSequences(long=_padding(sequence_config.long_len, J), short=_padding(sequence_config.short_len, J),
                             request_ts=int(request_ts))
    dataset = _one_user_dataset(state, manifest, request_ts)
    compressed = _one_user_clusters(state, manifest) if sequence_config.long_source == "compressed" else None
    builder = BatchBuilder(dataset, sequence_config, compressed)
    one = np.zeros(1, np.int64)
    sample = Samples(user_id=one, ts=np.array([request_ts], np.int64), item_id=one, label=one.astype(np.int8),
                     event_row=one)
    batch = builder.build(sample)
    return UserSequences(long=batch.long, short=batch.short, request_ts=int(request_ts))


def describe_positions(state: UserState, long: SequenceBatch, request_ts: int,
                       positions: np.ndarray) -> list[dict[str, Any]]:
    """Say what the long-sequence entries at ``positions`` (int ``[P]``) stand for.

    The batch builder returns features, not provenance, so each entry is matched back to the stored row it
    came from: a raw behavior (size 1) or a virtual item with the same item id and size, whose timestamp
    (``ts`` or ``mean_ts``) is nearest to the one the entry's ``time_gap`` implies. Entries that are exactly
    alike are interchangeable for an explanation, so any tie-break is correct.

    Returns:
        one dict per position: ``kind`` ("raw" or "virtual"), ``item_id`` (the representative item for a
        virtual item), ``cluster_size``, ``first_ts``, ``last_ts``.
    """
    item = long.item_id[0].numpy()
    size = long.size[0].numpy()
    gap = long.cross[0, :, -1].numpy().astype(np.float64)  # time_gap is the last channel
    flags = getattr(long, "virtual", None)  # set by compressed compositions: True where a virtual item sits
    virtual = None if flags is None else flags[0].numpy()
    ev, cl = state.events, state.clusters
    out = []
    for p in positions.tolist():
        it, n, when = int(item[p]), round(float(size[p])), request_ts - float(gap[p])
        best: tuple[float, dict[str, Any]] | None = None
        if n == 1 and len(ev) and (virtual is None or not virtual[p]):
            rows = np.flatnonzero(ev.item_id == it)
            for r in rows.tolist():
                d = abs(float(ev.ts[r]) - when)
                if best is None or d < best[0]:
                    best = (d, {"kind": "raw", "item_id": it, "cluster_size": 1, "first_ts": int(ev.ts[r]),
                                "last_ts": int(ev.ts[r])})
        if state.num_clusters and (virtual is None or virtual[p]):
            rows = np.flatnonzero((cl["rep_item_id"] == it) & (cl["cluster_size"] == n))
            for r in rows.tolist():
                d = abs(float(cl["mean_ts"][r]) - when)
                if best is None or d < best[0]:
                    best = (d, {"kind": "virtual", "item_id": it, "cluster_size": n,
                                "first_ts": int(cl["first_ts"][r]), "last_ts": int(cl["last_ts"][r])})
        if best is None:  # not reachable for entries the builder produced from this state
            best = (0.0, {"kind": "raw" if n == 1 else "virtual", "item_id": it, "cluster_size": n,
                          "first_ts": round(when), "last_ts": round(when)})
        out.append(best[1])
    return out

"""The life-cycle store: one small interface, SQLite by default (embedded, WAL) or Redis (shared).

What it holds (see :mod:`twinv2.serve.state`): per *version* (one compression job's output) and user, the
user's snapshot and virtual items (with centroids, for folding); per user, the recent raw behaviors and the
ids of every accepted live event. The active version is one pointer: :meth:`LifeCycleStore.activate`
swaps it atomically after a bulk load, so users are served from the old version until the swap.

Live events (:meth:`LifeCycleStore.append_events`) are durable when the call returns (SQLite commits with
``synchronous=FULL``; the Redis server must run with ``appendfsync always``), idempotent per
``(user_id, event_id)``, and refused when older than the user's snapshot. When a user's raw part (events at
or after the snapshot) exceeds ``raw_cap``, the oldest are folded into the user's clusters in the same
transaction by :class:`Folder` (the compression job's incremental assignment, :meth:`UserCompressor.update`).

Retention: events at or after the active version's snapshot are kept (a later version, whose snapshot is
later, may need them as its raw part), plus ``context`` events before the user's snapshot (the short-term
sequence); older events are pruned when the user is folded or a version is activated. Event ids are kept.
"""

from __future__ import annotations

import abc
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from twinv2.compress.cluster import ClusterConfig
from twinv2.compress.compressor import UserCompressor
from twinv2.compress.store import empty_columns, virtual_item_schema
from twinv2.data.batches import SequenceConfig
from twinv2.errors import ConfigError, RequestError, StoreError
from twinv2.serve.state import RawEvents, UserState

__all__ = ["AppendResult", "Event", "EventRejectedError", "Folder", "LifeCycleStore", "StoreError", "StoreSize",
           "VersionInfo", "context_length", "make_folder"]


class EventRejectedError(RequestError):
    """A live event cannot be accepted (older than its user's snapshot); ``field`` names it."""


@dataclass(frozen=True)
class Event:
    """One live behavior. ``cross`` holds the manifest's cross numerics by name (float)."""

    user_id: int
    event_id: str
    item_id: int
    ts: int
    label: int
    cross: dict[str, float]


@dataclass
class AppendResult:
    """What :meth:`LifeCycleStore.append_events` did: events stored, duplicates skipped, users folded."""

    accepted: int = 0
    duplicates: int = 0
    folded_users: int = 0
    folded_events: int = 0


@dataclass(frozen=True)
class VersionInfo:
    """One loaded compression version: its id, snapshot and where it came from."""

    version: str
    snapshot_ts: int
    source: str = ""
    users: int = 0
    clusters: int = 0
    loaded_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> VersionInfo:
        return cls(**json.loads(text))


@dataclass
class Folder:
    """Folds a user's oldest raw behaviors into their virtual items once the raw part exceeds ``raw_cap``.

    The raw part is cut down to ``raw_cap // 2`` behaviors (at a timestamp boundary: behaviors sharing a
    timestamp are folded together), so a fold rewrites the user's clusters once per ``raw_cap / 2`` events
    rather than on every event. ``compressor`` is the compression job's per-user engine (its embedding
    table, clustering config and averaged features); ``None`` for models that read raw sequences, whose
    raw part is simply trimmed to the most recent ``context`` behaviors.

    Attributes:
        cross_names: the manifest's cross numerics; context: events kept before the snapshot.
    """

    compressor: UserCompressor | None
    cross_names: list[str]
    raw_cap: int = 256
    context: int = 50

    def __post_init__(self) -> None:
        if self.raw_cap < 2:
            raise ConfigError(f"raw_cap must be >= 2, got {self.raw_cap}")

    @property
    def threshold(self) -> int:
        """Behaviors counted by :meth:`count` above which :meth:`fold` changes something."""
        return self.raw_cap if self.compressor is not None else 2 * max(self.raw_cap, self.context)

    def count(self, state: UserState) -> int:
        """The raw part's size: behaviors at or after the snapshot (all behaviors for a raw model)."""
        if self.compressor is None:
            return len(state.events)
        return int((state.events.ts >= state.snapshot_ts).sum())

    def fold(self, state: UserState, centroids: np.ndarray) -> tuple[UserState, np.ndarray, int]:
        """Return the folded state, its centroids float32 ``[C', d]`` and how many behaviors were folded.

        Raw models (no compressor) keep the most recent ``max(raw_cap, context)`` behaviors and do not move
        the snapshot."""
        ev = state.events
        if self.compressor is None:
            keep = max(self.raw_cap, self.context)
            if len(ev) <= self.threshold:
                return state, centroids, 0
            return replace(state, events=ev.take(np.arange(len(ev) - keep, len(ev)))), centroids, 0
        unfolded = np.flatnonzero(ev.ts >= state.snapshot_ts)
        if len(unfolded) <= self.raw_cap:
            return state, centroids, 0
        keep = max(1, self.raw_cap // 2)
        new_snapshot = int(ev.ts[unfolded[len(unfolded) - keep]])
        fold_rows = unfolded[ev.ts[unfolded] < new_snapshot]
        if len(fold_rows) == 0:  # every unfolded behavior shares one timestamp: nothing can be cut
            return state, centroids, 0
        folded = ev.take(fold_rows)
        comp = replace(self.compressor, snapshot_ts=new_snapshot)
        cfg = comp.config
        groups = None
        if cfg.group_bins == "quantile":
            # Quantile cuts come from the user's history; serving has the stored behaviors only.
            ref = np.clip(ev.cross["completion_ratio"].astype(np.float64), 0.0, 1.0)
            cuts = np.quantile(ref, np.arange(1, cfg.num_groups) / cfg.num_groups)
            groups = np.searchsorted(cuts, np.clip(folded.cross["completion_ratio"], 0.0, 1.0),
                                     side="left").astype(np.int8)
        if state.num_clusters:
            old = dict(state.clusters)
            old["centroid"] = centroids
            old.setdefault("user_id", np.full(len(centroids), state.user_id, np.int64))
        else:  # a user without virtual items yet (new since the compression job)
            dim = self.compressor.embeddings.shape[1]  # type: ignore[union-attr]
            old = empty_columns(virtual_item_schema(comp.mean_names), dim)
        cols = comp.update(state.user_id, old, folded.item_id, folded.ts, folded.label.astype(np.int8),
                           {n: folded.cross[n] for n in self.cross_names}, groups)
        new_centroids = cols.pop("centroid")
        # Keep the behaviors after the new snapshot and `context` before it (the short-term sequence).
        before = np.flatnonzero(ev.ts < new_snapshot)
        kept = np.concatenate([before[max(0, len(before) - self.context):], np.flatnonzero(ev.ts >= new_snapshot)])
        new_state = UserState(user_id=state.user_id, snapshot_ts=new_snapshot, clusters=cols,
                              events=ev.take(np.sort(kept)))
        return new_state, new_centroids, len(fold_rows)


def make_folder(compressed_manifest: dict[str, Any] | None, embeddings: np.ndarray | None,
                item_numerics: dict[str, np.ndarray], cross_names: list[str], raw_cap: int,
                context: int, item_categoricals: dict[str, np.ndarray] | None = None) -> Folder:
    """The :class:`Folder` of a compression version (``compressed_manifest`` None: a raw-sequence model).

    ``item_categoricals`` (int ``[num_items + 1]`` per inherent categorical) lets the fold keep a version's
    clusters pure when it was built with ``split_by``, and record member shares as the job does."""
    if compressed_manifest is None or embeddings is None:
        return Folder(None, cross_names, raw_cap, context)
    config = ClusterConfig(**compressed_manifest["cluster_config"])
    comp = UserCompressor(embeddings, item_numerics, list(cross_names), list(compressed_manifest["mean_features"]),
                          config, int(compressed_manifest["snapshot_ts"]), int(compressed_manifest["seed"]))
    available = item_categoricals or {}
    if config.split_by is not None and config.split_by not in available:
        raise ConfigError(f"the compression version clusters within values of {config.split_by!r}, which the "
                          f"model's item table does not have: live behaviors cannot be folded")
    # Member shares are recorded where the item table has the categorical (informational, like the job's).
    names = [n for n in compressed_manifest.get("member_share_features") or [] if n in available]
    if config.split_by is not None and config.split_by not in names:
        names.append(config.split_by)
    if names:
        comp = comp.with_item_categoricals(available, names)
    return Folder(comp, list(cross_names), raw_cap, context)


def events_to_raw(events: list[Event], cross_names: list[str]) -> RawEvents:
    """Live events as columns (input order)."""
    return RawEvents(np.array([e.item_id for e in events], np.int64), np.array([e.ts for e in events], np.int64),
                     np.array([e.label for e in events], np.int8),
                     {n: np.array([e.cross[n] for e in events], np.float32) for n in cross_names})


def assemble_events(rows: RawEvents, snapshot_ts: int, context: int) -> RawEvents:
    """The events a user's state needs, oldest first: ``context`` before ``snapshot_ts`` and all after.

    ``rows`` must be in storage order (arrival order); the sort by timestamp is stable, so ties keep it."""
    order = np.argsort(rows.ts, kind="stable")
    ev = rows.take(order)
    before = np.flatnonzero(ev.ts < snapshot_ts)
    after = np.flatnonzero(ev.ts >= snapshot_ts)
    return ev.take(np.concatenate([before[max(0, len(before) - context):], after]))


@dataclass
class StoreSize:
    """What :meth:`LifeCycleStore.size` reports."""

    users: int = 0
    clusters: int = 0
    events: int = 0
    bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class LifeCycleStore(abc.ABC):
    """The interface both backends implement (see the module docstring).

    ``cross_names`` fixes the raw-event layout; ``context`` is the number of events before the snapshot
    that :meth:`get_user` returns (the short-term sequence).
    """

    url: str

    def __init__(self, cross_names: list[str], context: int):
        self.cross_names, self.context = list(cross_names), int(context)

    # -- versions ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def active_version(self) -> VersionInfo | None:
        """The version being served, or None before the first load."""

    @abc.abstractmethod
    def put_users(self, version: str, rows: list[tuple[int, int, dict[str, np.ndarray], np.ndarray]]) -> None:
        """Stage ``(user_id, snapshot_ts, clusters, centroids)`` rows of a version not yet active."""

    @abc.abstractmethod
    def put_bootstrap_events(self, batch: list[tuple[int, RawEvents]]) -> None:
        """Store users' raw behaviors from the offline logs (no event ids; first load only)."""

    @abc.abstractmethod
    def activate(self, info: VersionInfo) -> None:
        """Atomically make ``info.version`` the served version and drop the previous one."""

    @abc.abstractmethod
    def has_events(self) -> bool:
        """Whether any raw behavior is stored (a first load bootstraps them from the logs)."""

    # -- users and events ----------------------------------------------------------------------------
    @abc.abstractmethod
    def get_user(self, user_id: int) -> UserState:
        """The user's state in the active version (``known=False`` and empty for an unknown user)."""

    @abc.abstractmethod
    def append_events(self, events: list[Event], folder: Folder) -> AppendResult:
        """Store live events durably (see the module docstring).

        Raises:
            EventRejectedError: an event is older than its user's snapshot (nothing of the call is stored for
                that user).
        """

    # -- metadata ------------------------------------------------------------------------------------
    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A small shared setting (the served checkpoint, for example)."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Set a shared setting durably."""

    @abc.abstractmethod
    def size(self) -> StoreSize:
        """Users, clusters and events of the active version, and bytes used."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def context_length(sequence_config: SequenceConfig) -> int:
    """Raw behaviors before the snapshot a user's state keeps: the short sequence (``short_len``), or for a
    raw-sequence model the whole long sequence too (``max(long_len, short_len)``)."""
    if sequence_config.long_source == "compressed":
        return sequence_config.short_len
    return max(sequence_config.long_len, sequence_config.short_len)

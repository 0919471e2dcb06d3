"""The shared store: Redis (``--store redis://host:port/db``), for stateless replicas behind a load balancer.

Keys (prefix ``twinv2:``): ``meta`` (hash: active version, served checkpoint, counters), ``u:<version>:<user>``
(hash: ``snapshot``, ``clusters``, ``centroids``, ``num_clusters``, ``unfolded``), ``ev:<user>`` (list of
packed raw behaviors in arrival order), ``eid:<user>`` (set of accepted event ids), ``vstat:<version>``
(hash: users, clusters). An event is appended by one Lua script (snapshot check, id check, push, count),
so concurrent replicas cannot store it twice; a fold is an optimistic transaction (``WATCH`` the user's
keys, retry on conflict). Durability of an acknowledged event is the server's: run Redis with
``appendonly yes`` and ``appendfsync always`` (the tests do), or accept ``everysec``'s one-second window.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from twinv2.errors import StoreError
from twinv2.serve.state import RawEvents, UserState, decode_arrays, encode_arrays
from twinv2.serve.store import (
    AppendResult,
    Event,
    EventRejectedError,
    Folder,
    LifeCycleStore,
    StoreSize,
    VersionInfo,
    assemble_events,
)

__all__ = ["RedisStore"]

_PREFIX = "twinv2:"
_NO_SNAPSHOT = -(2**62)
_FOLD_RETRIES = 20

# KEYS: eid set, event list, user hash, meta. ARGV: event id, packed event, ts, default snapshot.
# Returns 0 (duplicate id: a no-op even if the snapshot has moved past it), -1 (older than the snapshot) or
# the user's unfolded count after the push.
_APPEND = """
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
local snap = redis.call('HGET', KEYS[3], 'snapshot')
if not snap then snap = ARGV[4] end
if tonumber(ARGV[3]) < tonumber(snap) then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[4], 'events', 1)
return redis.call('HINCRBY', KEYS[3], 'unfolded', 1)
"""


class RedisStore(LifeCycleStore):
    """:class:`LifeCycleStore` on a Redis server (``redis`` is imported here only)."""

    def __init__(self, url: str, cross_names: list[str], context: int):
        super().__init__(cross_names, context)
        try:
            import redis
        except ImportError as exc:
            raise StoreError(f"--store {url}: the Redis store needs the redis client: pip install "
                             "'twinv2[serve]'") from exc

        self._redis_module = redis
        self.url = url
        try:
            self.r = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)
            self.r.ping()
        except (redis.RedisError, ValueError) as exc:
            raise StoreError(f"--store {url}: cannot reach Redis ({exc})") from exc
        self._append = self.r.register_script(_APPEND)
        self._dtype = np.dtype([("ts", "<i8"), ("item", "<i8"), ("label", "i1"),
                                ("cross", "<f4", (len(self.cross_names),))])

    # -- keys and encoding ---------------------------------------------------------------------------
    @staticmethod
    def _k(*parts: Any) -> str:
        return _PREFIX + ":".join(str(p) for p in parts)

    def _pack(self, ev: RawEvents) -> list[bytes]:
        rec = np.zeros(len(ev), self._dtype)
        rec["ts"], rec["item"], rec["label"] = ev.ts, ev.item_id, ev.label
        if len(ev):
            rec["cross"] = np.stack([ev.cross[n] for n in self.cross_names], axis=1)
        return [r.tobytes() for r in rec]

    def _unpack(self, items: list[bytes]) -> RawEvents:
        if not items:
            return RawEvents.empty(self.cross_names)
        rec = np.frombuffer(b"".join(items), self._dtype)
        return RawEvents(rec["item"].astype(np.int64), rec["ts"].astype(np.int64),
                         rec["label"].astype(np.int8),
                         {n: rec["cross"][:, j].astype(np.float32) for j, n in enumerate(self.cross_names)})

    # -- versions ------------------------------------------------------------------------------------
    def active_version(self) -> VersionInfo | None:
        value = self.r.hget(self._k("meta"), "active_version")
        return None if value is None else VersionInfo.from_json(value.decode())

    def put_users(self, version: str, rows: list[tuple[int, int, dict[str, np.ndarray], np.ndarray]]) -> None:
        pipe = self.r.pipeline(transaction=False)
        clusters = 0
        for user, snapshot, cols, cent in rows:
            pipe.hset(self._k("u", version, int(user)), mapping={
                "snapshot": int(snapshot), "clusters": encode_arrays(cols), "centroids": encode_arrays({"c": cent}),
                "num_clusters": len(cols["rep_item_id"])})
            clusters += len(cols["rep_item_id"])
        pipe.hincrby(self._k("vstat", version), "users", len(rows))
        pipe.hincrby(self._k("vstat", version), "clusters", clusters)
        pipe.execute()

    def put_bootstrap_events(self, batch: list[tuple[int, RawEvents]]) -> None:
        pipe = self.r.pipeline(transaction=False)
        total = 0
        for user, ev in batch:
            if len(ev):
                pipe.rpush(self._k("ev", int(user)), *self._pack(ev))
                total += len(ev)
        pipe.hincrby(self._k("meta"), "events", total)
        pipe.execute()

    def has_events(self) -> bool:
        return int(self.r.hget(self._k("meta"), "events") or 0) > 0

    def _scan_delete(self, pattern: str) -> None:
        batch = []
        for key in self.r.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                self.r.unlink(*batch)
                batch = []
        if batch:
            self.r.unlink(*batch)

    def activate(self, info: VersionInfo) -> None:
        old = self.active_version()
        stat = self.r.hgetall(self._k("vstat", info.version))
        info = VersionInfo(info.version, info.snapshot_ts, info.source, int(stat.get(b"users", 0)),
                           int(stat.get(b"clusters", 0)), time.time())
        self.r.hset(self._k("meta"), "active_version", info.to_json())  # the atomic swap
        if old is not None and old.version != info.version:
            self._scan_delete(self._k("u", old.version, "*"))
            self.r.unlink(self._k("vstat", old.version))
        self._prune_all(info.snapshot_ts)

    def _prune_all(self, snapshot_ts: int) -> None:
        for key in self.r.scan_iter(match=self._k("ev", "*"), count=1000):
            self._rewrite_events(key, lambda ev: _keep_rows(ev, snapshot_ts, self.context))

    def _rewrite_events(self, key: bytes | str, keep_fn: Any) -> None:
        redis = self._redis_module
        for _ in range(_FOLD_RETRIES):
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    items = pipe.lrange(key, 0, -1)
                    keep = keep_fn(self._unpack(items))
                    if len(keep) == len(items):
                        pipe.unwatch()
                        return
                    pipe.multi()
                    pipe.delete(key)
                    if len(keep):
                        pipe.rpush(key, *[items[i] for i in keep])
                    pipe.hincrby(self._k("meta"), "events", len(keep) - len(items))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    # -- users and events ----------------------------------------------------------------------------
    def _state(self, version: VersionInfo | None, user_id: int, row: dict[bytes, bytes], items: list[bytes],
               with_centroids: bool) -> tuple[UserState, np.ndarray | None]:
        events = self._unpack(items)
        has_clusters = b"clusters" in row
        default = version.snapshot_ts if version else _NO_SNAPSHOT
        snapshot = int(row[b"snapshot"]) if b"snapshot" in row else default
        clusters = decode_arrays(row[b"clusters"]) if has_clusters else {}
        centroids = decode_arrays(row[b"centroids"])["c"] if has_clusters and with_centroids else None
        state = UserState(user_id=user_id, snapshot_ts=snapshot, clusters=clusters,
                          events=assemble_events(events, snapshot, self.context), known=has_clusters or len(events) > 0)
        return state, centroids

    def get_user(self, user_id: int) -> UserState:
        version = self.active_version()
        pipe = self.r.pipeline(transaction=True)  # MULTI/EXEC: the hash and the list from one moment
        pipe.hgetall(self._k("u", version.version if version else "none", int(user_id)))
        pipe.lrange(self._k("ev", int(user_id)), 0, -1)
        row, items = pipe.execute()
        return self._state(version, int(user_id), row, items, with_centroids=False)[0]

    def append_events(self, events: list[Event], folder: Folder) -> AppendResult:
        result = AppendResult()
        version = self.active_version()
        vname = version.version if version else "none"
        default = version.snapshot_ts if version else _NO_SNAPSHOT
        users = sorted({e.user_id for e in events})
        pipe = self.r.pipeline(transaction=False)
        for u in users:
            pipe.hget(self._k("u", vname, u), "snapshot")
        for e in events:
            pipe.sismember(self._k("eid", e.user_id), e.event_id)
        answers = pipe.execute()
        snapshots = {u: int(s) if s is not None else default for u, s in zip(users, answers, strict=False)}
        seen = answers[len(users):]
        for i, e in enumerate(events):  # refuse the whole call before storing anything (retries are no-ops)
            if not seen[i] and e.ts < snapshots[e.user_id]:
                raise EventRejectedError(f"events[{i}].ts", f"{e.ts} is older than user {e.user_id}'s snapshot "
                                         f"{snapshots[e.user_id]}: behaviors before it are already compressed")
        unfolded: dict[int, int] = {}
        for i, e in enumerate(events):
            raw = RawEvents(np.array([e.item_id], np.int64), np.array([e.ts], np.int64), np.array([e.label], np.int8),
                            {n: np.array([e.cross[n]], np.float32) for n in self.cross_names})
            code = int(self._append(keys=[self._k("eid", e.user_id), self._k("ev", e.user_id),
                                          self._k("u", vname, e.user_id), self._k("meta")],
                                    args=[e.event_id, self._pack(raw)[0], e.ts, default]))
            if code == -1:  # a fold elsewhere moved the snapshot past it since the check above
                raise EventRejectedError(f"events[{i}].ts", f"{e.ts} is older than user {e.user_id}'s snapshot")
            if code == 0:
                result.duplicates += 1
            else:
                result.accepted += 1
                unfolded[e.user_id] = code
        for user, count in unfolded.items():
            if count > folder.threshold:
                self._fold(version, user, folder, result)
        return result

    def _fold(self, version: VersionInfo | None, user_id: int, folder: Folder, result: AppendResult) -> None:
        redis = self._redis_module
        vname = version.version if version else "none"
        ukey, ekey = self._k("u", vname, user_id), self._k("ev", user_id)
        for _ in range(_FOLD_RETRIES):
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(ukey, ekey)
                    row = pipe.hgetall(ukey)
                    items = pipe.lrange(ekey, 0, -1)
                    state, centroids = self._state(version, user_id, row, items, with_centroids=True)
                    exact = folder.count(state)
                    if exact <= folder.threshold:
                        pipe.multi()
                        pipe.hset(ukey, "unfolded", exact)
                        pipe.execute()
                        return
                    if centroids is None:
                        dim = 0 if folder.compressor is None or folder.compressor.embeddings is None \
                            else folder.compressor.embeddings.shape[1]
                        centroids = np.zeros((0, dim), np.float32)
                    new_state, new_centroids, n_folded = folder.fold(state, centroids)
                    all_events = self._unpack(items)
                    if folder.compressor is None:
                        cut_keep = _keep_latest(all_events, len(new_state.events))
                    else:
                        cut = min(version.snapshot_ts if version else _NO_SNAPSHOT, new_state.snapshot_ts)
                        cut_keep = _keep_rows(all_events, cut, self.context)
                    pipe.multi()
                    if n_folded:
                        pipe.hset(ukey, mapping={"snapshot": new_state.snapshot_ts,
                                                 "clusters": encode_arrays(new_state.clusters),
                                                 "centroids": encode_arrays({"c": new_centroids}),
                                                 "num_clusters": new_state.num_clusters,
                                                 "unfolded": folder.count(new_state)})
                        if b"clusters" not in row:
                            pipe.hincrby(self._k("vstat", vname), "users", 1)
                        pipe.hincrby(self._k("vstat", vname), "clusters",
                                     new_state.num_clusters - state.num_clusters)
                    if len(cut_keep) != len(items):
                        pipe.delete(ekey)
                        if len(cut_keep):
                            pipe.rpush(ekey, *[items[i] for i in cut_keep])
                        pipe.hincrby(self._k("meta"), "events", len(cut_keep) - len(items))
                    pipe.execute()
                    if n_folded:
                        result.folded_users += 1
                        result.folded_events += n_folded
                    return
                except redis.WatchError:
                    continue

    # -- metadata ------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        value = self.r.hget(self._k("meta"), key)
        return None if value is None else value.decode()

    def set_meta(self, key: str, value: str) -> None:
        self.r.hset(self._k("meta"), key, value)

    def size(self) -> StoreSize:
        version = self.active_version()
        stat = self.r.hgetall(self._k("vstat", version.version)) if version else {}
        info = self.r.info("memory")
        return StoreSize(users=int(stat.get(b"users", 0)), clusters=int(stat.get(b"clusters", 0)),
                         events=int(self.r.hget(self._k("meta"), "events") or 0),
                         bytes=int(info.get("used_memory", 0)), extra={"keys": int(self.r.dbsize())})

    def close(self) -> None:
        self.r.close()


def _keep_rows(ev: RawEvents, cut: int, context: int) -> np.ndarray:
    """Storage positions to keep (in storage order): events at or after ``cut``, and the ``context`` most
    recent before it."""
    order = np.argsort(ev.ts, kind="stable")
    before = order[ev.ts[order] < cut]
    keep = np.concatenate([before[max(0, len(before) - context):], order[ev.ts[order] >= cut]])
    return np.sort(keep)


def _keep_latest(ev: RawEvents, count: int) -> np.ndarray:
    """Storage positions of the ``count`` most recent events (in storage order)."""
    order = np.argsort(ev.ts, kind="stable")
    return np.sort(order[len(order) - count:]) if count else np.zeros(0, np.int64)


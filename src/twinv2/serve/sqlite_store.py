"""The embedded store: one SQLite file in WAL mode (readers never block the writer, and vice versa).

Tables: ``meta`` (key/value: the active version, the served checkpoint), ``users`` (per version and user:
snapshot, clusters blob, centroids blob), ``events`` (raw behaviors in arrival order: ``seq`` is the
arrival counter), ``event_ids`` (every accepted ``(user_id, event_id)``, never pruned). A live-event call is
one ``BEGIN IMMEDIATE`` transaction committed with ``synchronous=FULL``: when it returns, the events survive
a process kill and a power cut. Several server processes may share the file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

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

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users(version TEXT NOT NULL, user_id INTEGER NOT NULL, snapshot_ts INTEGER NOT NULL,
    num_clusters INTEGER NOT NULL, clusters BLOB NOT NULL, centroids BLOB NOT NULL,
    PRIMARY KEY(version, user_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id INTEGER NOT NULL,
    ts INTEGER NOT NULL, item_id INTEGER NOT NULL, label INTEGER NOT NULL, cross BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_user ON events(user_id, seq);
CREATE TABLE IF NOT EXISTS event_ids(user_id INTEGER NOT NULL, event_id TEXT NOT NULL,
    PRIMARY KEY(user_id, event_id)) WITHOUT ROWID;
"""


class SqliteStore(LifeCycleStore):
    """:class:`LifeCycleStore` in one SQLite file (created if absent). One connection per thread."""

    def __init__(self, path: str | os.PathLike, cross_names: list[str], context: int):
        super().__init__(cross_names, context)
        self.path = Path(path)
        self.url = f"sqlite://{self.path}"
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = self._con()
            con.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"--store {self.url}: cannot open the SQLite file ({exc})") from exc

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")  # a committed event survives a power cut, not just a kill
            con.execute("PRAGMA busy_timeout=30000")
            self._local.con = con
        return con

    # -- encoding ------------------------------------------------------------------------------------
    def _cross_blob(self, cross: dict[str, float]) -> bytes:
        return np.array([cross[n] for n in self.cross_names], np.float32).tobytes()

    def _rows_to_events(self, rows: list[tuple]) -> RawEvents:
        if not rows:
            return RawEvents.empty(self.cross_names)
        cross = np.frombuffer(b"".join(r[3] for r in rows), np.float32).reshape(len(rows), len(self.cross_names))
        return RawEvents(np.array([r[1] for r in rows], np.int64), np.array([r[0] for r in rows], np.int64),
                         np.array([r[2] for r in rows], np.int8),
                         {n: cross[:, j].copy() for j, n in enumerate(self.cross_names)})

    # -- versions ------------------------------------------------------------------------------------
    def active_version(self) -> VersionInfo | None:
        value = self.get_meta("active_version")
        return None if value is None else VersionInfo.from_json(value)

    def put_users(self, version: str, rows: list[tuple[int, int, dict[str, np.ndarray], np.ndarray]]) -> None:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(
                "INSERT OR REPLACE INTO users(version, user_id, snapshot_ts, num_clusters, clusters, centroids) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(version, int(u), int(s), len(c["rep_item_id"]), encode_arrays(c), encode_arrays({"c": cent}))
                 for u, s, c, cent in rows])
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def put_bootstrap_events(self, batch: list[tuple[int, RawEvents]]) -> None:
        rows = []
        for user_id, events in batch:
            if not len(events):
                continue
            cross = np.stack([events.cross[n] for n in self.cross_names], axis=1).astype(np.float32)
            rows += [(int(user_id), int(events.ts[i]), int(events.item_id[i]), int(events.label[i]),
                      cross[i].tobytes()) for i in range(len(events))]
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany("INSERT INTO events(user_id, ts, item_id, label, cross) VALUES (?, ?, ?, ?, ?)", rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def has_events(self) -> bool:
        return self._con().execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None

    def activate(self, info: VersionInfo) -> None:
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            users, clusters = con.execute("SELECT COUNT(*), COALESCE(SUM(num_clusters), 0) FROM users "
                                          "WHERE version = ?", (info.version,)).fetchone()
            info = VersionInfo(info.version, info.snapshot_ts, info.source, int(users), int(clusters), time.time())
            con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('active_version', ?)", (info.to_json(),))
            con.execute("DELETE FROM users WHERE version <> ?", (info.version,))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._prune_all(info.snapshot_ts)

    def _prune_all(self, snapshot_ts: int) -> None:
        """Drop events before ``snapshot_ts`` except the last ``context`` of each user."""
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute(
                "DELETE FROM events WHERE ts < ? AND seq NOT IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER "
                "(PARTITION BY user_id ORDER BY ts DESC, seq DESC) AS r FROM events WHERE ts < ?) WHERE r <= ?)",
                (snapshot_ts, snapshot_ts, self.context))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # -- users and events ----------------------------------------------------------------------------
    def _read_user(self, con: sqlite3.Connection, version: VersionInfo | None, user_id: int,
                   with_centroids: bool) -> tuple[UserState, np.ndarray | None]:
        row = None
        if version is not None:
            cols = "snapshot_ts, clusters" + (", centroids" if with_centroids else "")
            row = con.execute(f"SELECT {cols} FROM users WHERE version = ? AND user_id = ?",
                              (version.version, user_id)).fetchone()
        events = self._rows_to_events(con.execute(
            "SELECT ts, item_id, label, cross FROM events WHERE user_id = ? ORDER BY seq", (user_id,)).fetchall())
        snapshot = int(row[0]) if row else (version.snapshot_ts if version else -(2**62))
        clusters = decode_arrays(row[1]) if row else {}
        centroids = decode_arrays(row[2])["c"] if row and with_centroids else None
        known = row is not None or len(events) > 0
        state = UserState(user_id=user_id, snapshot_ts=snapshot, clusters=clusters,
                          events=assemble_events(events, snapshot, self.context), known=known)
        return state, centroids

    def get_user(self, user_id: int) -> UserState:
        con = self._con()
        con.execute("BEGIN")  # one consistent snapshot of the version pointer, the user row and the events
        try:
            value = con.execute("SELECT value FROM meta WHERE key = 'active_version'").fetchone()
            version = VersionInfo.from_json(value[0]) if value else None
            state, _ = self._read_user(con, version, int(user_id), with_centroids=False)
        finally:
            con.execute("COMMIT")
        return state

    def append_events(self, events: list[Event], folder: Folder) -> AppendResult:
        result = AppendResult()
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            value = con.execute("SELECT value FROM meta WHERE key = 'active_version'").fetchone()
            version = VersionInfo.from_json(value[0]) if value else None
            by_user: dict[int, list[tuple[int, Event]]] = {}
            for i, e in enumerate(events):
                by_user.setdefault(e.user_id, []).append((i, e))
            for user_id, items in by_user.items():
                row = None if version is None else con.execute(
                    "SELECT snapshot_ts FROM users WHERE version = ? AND user_id = ?", (version.version, user_id)
                ).fetchone()
                snapshot = int(row[0]) if row else (version.snapshot_ts if version else -(2**62))
                fresh = []
                for i, e in items:
                    # A retry is a no-op even when a fold has since moved the snapshot past it.
                    cur = con.execute("INSERT OR IGNORE INTO event_ids(user_id, event_id) VALUES (?, ?)",
                                      (user_id, e.event_id))
                    if cur.rowcount != 1:
                        result.duplicates += 1
                    elif e.ts < snapshot:  # the transaction rolls back: nothing of the call is stored
                        raise EventRejectedError(f"events[{i}].ts", f"{e.ts} is older than user {user_id}'s "
                                                 f"snapshot {snapshot}: behaviors before it are already compressed")
                    else:
                        fresh.append(e)
                if not fresh:
                    continue
                con.executemany("INSERT INTO events(user_id, ts, item_id, label, cross) VALUES (?, ?, ?, ?, ?)",
                                [(user_id, e.ts, e.item_id, e.label, self._cross_blob(e.cross)) for e in fresh])
                result.accepted += len(fresh)
                self._maybe_fold(con, version, user_id, snapshot, folder, result)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return result

    def _maybe_fold(self, con: sqlite3.Connection, version: VersionInfo | None, user_id: int, snapshot: int,
                    folder: Folder, result: AppendResult) -> None:
        """Fold the user inside the caller's transaction when the raw part is over the cap."""
        count_from = snapshot if folder.compressor is not None else -(2**62)
        (count,) = con.execute("SELECT COUNT(*) FROM events WHERE user_id = ? AND ts >= ?",
                               (user_id, count_from)).fetchone()
        if count <= folder.threshold:
            return
        state, centroids = self._read_user(con, version, user_id, with_centroids=True)
        if centroids is None:
            dim = 0 if folder.compressor is None or folder.compressor.embeddings is None \
                else folder.compressor.embeddings.shape[1]
            centroids = np.zeros((0, dim), np.float32)
        new_state, new_centroids, n_folded = folder.fold(state, centroids)
        if folder.compressor is None:  # raw model: trim the oldest events
            keep_from = len(state.events) - len(new_state.events)
            if keep_from > 0:
                rows = con.execute("SELECT seq FROM events WHERE user_id = ? ORDER BY ts, seq", (user_id,)).fetchall()
                con.executemany("DELETE FROM events WHERE seq = ?", rows[:len(rows) - len(new_state.events)])
            return
        if n_folded == 0 or version is None:
            return
        con.execute("INSERT OR REPLACE INTO users(version, user_id, snapshot_ts, num_clusters, clusters, centroids) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (version.version, user_id, new_state.snapshot_ts, new_state.num_clusters,
                     encode_arrays(new_state.clusters), encode_arrays({"c": new_centroids})))
        # Prune what no version needs: before the version's snapshot, beyond the user's context.
        con.execute("DELETE FROM events WHERE user_id = ? AND ts < ? AND seq NOT IN (SELECT seq FROM events "
                    "WHERE user_id = ? AND ts < ? ORDER BY ts DESC, seq DESC LIMIT ?)",
                    (user_id, min(version.snapshot_ts, new_state.snapshot_ts), user_id,
                     min(version.snapshot_ts, new_state.snapshot_ts), self.context))
        result.folded_users += 1
        result.folded_events += n_folded

    # -- metadata ------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._con().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._con().execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def size(self) -> StoreSize:
        con = self._con()
        version = self.active_version()
        users = clusters = 0
        if version is not None:
            users, clusters = con.execute("SELECT COUNT(*), COALESCE(SUM(num_clusters), 0) FROM users "
                                          "WHERE version = ?", (version.version,)).fetchone()
        (events,) = con.execute("SELECT COUNT(*) FROM events").fetchone()
        nbytes = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return StoreSize(users=int(users), clusters=int(clusters), events=int(events), bytes=int(nbytes))

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

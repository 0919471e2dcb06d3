"""The compression job: every user's life cycle before a snapshot, clustered into virtual items.

:func:`compress_dataset` loads a dataset, builds and validates the item embedding table, and processes users
in contiguous id ranges ("parts", ``users_per_part`` users each). Each part is computed by one worker process
(one maths thread each) and written atomically as ``part-NNNNN.parquet``, so after a crash or a kill the same
command skips the finished parts; the result is byte-identical to an uninterrupted run because every user's
clusters depend only on ``(seed, user_id)`` and the user's own behaviors. :func:`compress_incremental` folds
the behaviors of ``[old snapshot, new snapshot)`` into an existing folder's clusters and writes a new folder.

``ClusterConfig.split_by`` (``--split-by``) names an inherent categorical whose values no cluster mixes; every
run also records, per inherent categorical, the share of each cluster's members holding its majority value
and its representative's value (``twinv2 compress stats`` reports them as member purity).

Memory: the local backend never holds the whole log. The parent reads the dataset's items and user
offsets, then streams the events a row group at a time (validation, per-user counts before the snapshot,
the co-occurrence embeddings' chunks); a part task is a descriptor (users and row ranges) and whoever runs
it reads only its users' rows from ``events.parquet``. Peak memory is O(one part + one row group + the item
tables) per process, plus the co-occurrence stage's bounded working set (docs/compression.md, "Memory").

Backends: ``local`` (``multiprocessing`` with the spawn start method) and ``spark``
(:mod:`twinv2.compress.spark`, the same per-user function under ``groupBy("user_id").applyInPandas``).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import EllipsisType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2._io import load_npy, read_json_object, save_npy_atomic, write_json_atomic
from twinv2._progress import make_progress
from twinv2.compress.cluster import ClusterConfig
from twinv2.compress.compressor import ONE_THREAD_ENV, UserCompressor
from twinv2.compress.embeddings import (
    DEFAULT_COOCCURRENCE_MEMORY,
    EmbeddingSource,
    ItemEmbeddingTable,
    item_embedding_table,
)
from twinv2.compress.store import (
    BASE_COLUMNS,
    DEFAULT_CHUNK_ROWS,
    EMBEDDINGS_FILE,
    FORMAT_VERSION,
    JOB_FILE,
    KIND,
    MANIFEST_FILE,
    OFFSETS_FILE,
    Columns,
    EventFile,
    check_compressed_output,
    concat_columns,
    empty_columns,
    mean_feature_names,
    open_dataset_events,
    part_name,
    read_compressed_manifest,
    read_part,
    scan_events,
    virtual_item_schema,
    write_part,
)
from twinv2.data.store import Dataset
from twinv2.errors import CompressionError, ConfigError, DataValidationError, EmbeddingError

__all__ = ["BACKENDS", "CompressSummary", "UserCompressor", "compress_dataset", "compress_incremental"]

BACKENDS = ("local", "spark")
DEFAULT_USERS_PER_PART = 256
# Read when a run starts (tests shrink them to exercise many chunks, buckets and files on small data).
COOCCURRENCE_MEMORY = DEFAULT_COOCCURRENCE_MEMORY  # bytes: working set of the co-occurrence embeddings
CHUNK_ROWS = DEFAULT_CHUNK_ROWS  # behaviors per chunk when the co-occurrence embeddings stream the events
# ---- parts ---------------------------------------------------------------------------------------------


@dataclass
class PartTask:
    """Users ``[user_start, user_end)`` of one part, as row ranges of the events (not the behaviors).

    User ``user_start + k`` owns rows ``offsets[k]:offsets[k + 1]`` and the task processes rows
    ``lo_rows[k]:hi_rows[k]`` (a full run: from the first row to the snapshot; incremental: between the
    two snapshots).
    """

    index: int
    user_start: int
    user_end: int
    events: EventFile
    offsets: np.ndarray
    lo_rows: np.ndarray
    hi_rows: np.ndarray
    out_file: str
    incremental: bool = False
    base_file: str | None = None          # incremental: the base folder's part with the same users, if any
    quantile_groups: int | None = None    # incremental with quantile bins: the number of groups M


@dataclass
class PartResult:
    """What one finished part holds."""

    index: int
    users: int
    behaviors: int
    clusters: int


def _quantile_groups(completion: np.ndarray, first: int, lo: int, hi: int, num_groups: int) -> np.ndarray:
    """Groups of the new behaviors ``completion[lo:hi]`` by the quantile cuts of the user's clustered history
    ``completion[first:lo]`` (its behaviors before the base snapshot), int8."""
    new = np.clip(completion[lo:hi].astype(np.float64), 0.0, 1.0)
    old = completion[first:lo]
    ref = np.clip(old.astype(np.float64), 0.0, 1.0) if len(old) else new
    if len(ref) == 0:
        return np.zeros(0, np.int8)
    cuts = np.quantile(ref, np.arange(1, num_groups) / num_groups)
    return np.searchsorted(cuts, new, side="left").astype(np.int8)


def _release_memory() -> None:
    """Hand freed memory back to the OS: Arrow's allocator keeps freed row groups, and glibc keeps freed
    blocks below its (growing) mmap threshold in the heap, so a finished stage would stay resident."""
    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def process_part(comp: UserCompressor, task: PartTask) -> PartResult:
    """Read the part's rows, compress (or update) every user of it and write the part file atomically."""
    schema = virtual_item_schema(comp.mean_names, comp.share_names)
    dim = comp.embeddings.shape[1]  # type: ignore[union-attr]
    old: Columns | None = None
    if task.incremental:
        # Users added to the dataset after the base run have no base part: they start with no clusters.
        old = read_part(task.base_file) if task.base_file else empty_columns(schema, dim)
    n = task.user_end - task.user_start
    start = int(task.offsets[0]) if task.quantile_groups is not None else int(task.lo_rows[0]) if n else 0
    rows = task.events.read(start, int(task.hi_rows[-1]) if n else 0)
    item_id, ts, label = rows["item_id"], rows["ts"], rows["label"]
    cross = {name: rows[name] for name in task.events.cross}
    per_user: list[Columns] = []
    for k, user in enumerate(range(task.user_start, task.user_end)):
        lo, hi = int(task.lo_rows[k]) - start, int(task.hi_rows[k]) - start
        args = (item_id[lo:hi], ts[lo:hi], label[lo:hi], {name: v[lo:hi] for name, v in cross.items()})
        if old is None:
            if hi > lo:
                per_user.append(comp.compress(user, *args))
            continue
        a, b = np.searchsorted(old["user_id"], [user, user + 1])
        if hi == lo and a == b:
            continue
        old_user = {name: values[a:b] for name, values in old.items()}
        groups = None
        if task.quantile_groups is not None:
            groups = _quantile_groups(cross["completion_ratio"], int(task.offsets[k]) - start, lo, hi,
                                      task.quantile_groups)
        per_user.append(comp.update(user, old_user, *args, new_groups=groups))
    columns = concat_columns(per_user, schema, dim)
    write_part(task.out_file, columns, schema)
    del rows, item_id, ts, label, cross, per_user
    _release_memory()
    return PartResult(task.index, n, int(columns["cluster_size"].sum()), len(columns["cluster_size"]))


_WORKER: UserCompressor | None = None


def _init_worker(comp: UserCompressor, embeddings_file: str) -> None:
    global _WORKER
    # Memory-mapped: workers share the table through the page cache instead of each holding a copy.
    _WORKER = replace(comp, embeddings=np.load(embeddings_file, mmap_mode="r"))


def _worker_process_part(task: PartTask) -> PartResult:
    assert _WORKER is not None
    return process_part(_WORKER, task)


@contextlib.contextmanager
def _one_thread_env() -> Iterator[None]:
    """Set the one-thread variables while worker processes start (they copy the environment)."""
    saved = {k: os.environ.get(k) for k in ONE_THREAD_ENV}
    os.environ.update({k: "1" for k in ONE_THREAD_ENV})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _run_local(comp: UserCompressor, tasks: Iterator[PartTask], workers: int, embeddings_file: Path,
               on_result: Callable[[PartResult], None]) -> None:
    """Run tasks in this process (``workers == 1``) or in a spawn pool with a bounded queue."""
    if workers == 1:
        for task in tasks:
            on_result(process_part(comp, task))
        return
    light = replace(comp, embeddings=None)
    ctx = multiprocessing.get_context("spawn")
    with _one_thread_env():
        pool = ctx.Pool(workers, initializer=_init_worker, initargs=(light, str(embeddings_file)))
    try:
        pending: deque = deque()
        for task in tasks:
            pending.append(pool.apply_async(_worker_process_part, (task,)))
            while len(pending) >= 2 * workers:  # bound the memory held by queued part data
                on_result(pending.popleft().get())
        while pending:
            on_result(pending.popleft().get())
        pool.close()
        pool.join()
    finally:
        pool.terminate()


# ---- the job -------------------------------------------------------------------------------------------


@dataclass
class CompressSummary:
    """What a run did. ``compression_ratio`` = virtual items / behaviors represented; ``behaviors_in`` = the
    behaviors read by this run (before the snapshot, or since the base snapshot for incremental runs)."""

    out: str
    backend: str
    workers: int
    snapshot_ts: int
    num_users: int
    num_behaviors: int
    behaviors_in: int
    num_clusters: int
    seconds: float
    parts_written: int
    parts_skipped: int
    incremental: bool = False
    already_complete: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase: load, embeddings, cluster

    @property
    def compression_ratio(self) -> float:
        return self.num_clusters / self.num_behaviors if self.num_behaviors else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["compression_ratio"] = self.compression_ratio
        return d


def _seed_int(seed: int | np.random.Generator) -> int:
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**63 - 1))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed={seed!r}: expected an int >= 0 or a numpy Generator")
    return int(seed)


def _dataset_params(ds: Dataset) -> dict[str, Any]:
    m = ds.manifest
    return {"path": str(ds.path.resolve()), "fingerprint": m.fingerprint(), "num_users": m.num_users,
            "num_items": m.num_items, "num_events": m.num_events, "time_min": m.time_min, "time_max": m.time_max}


def _item_numerics(ds: Dataset) -> dict[str, np.ndarray]:
    return {c.name: ds.items[c.name].astype(np.float32) for c in ds.manifest.item_numerics}


def _categorical_names(ds: Dataset) -> list[str]:
    return [c.name for c in ds.manifest.item_categoricals]


def check_split_by(split_by: str | None, ds: Dataset) -> None:
    """Raise :class:`ConfigError` (one line naming ``--split-by`` and the valid names) unless ``split_by`` is
    None or an inherent categorical of ``ds``."""
    if split_by is None:
        return
    names = _categorical_names(ds)
    if split_by not in names:
        valid = ", ".join(names) if names else "none: the dataset has no inherent categorical"
        raise ConfigError(f"--split-by {split_by!r} is not an inherent categorical of {ds.path}: expected one of "
                          f"{valid}")


def _diff_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _prepare_out(out: Path, params: dict[str, Any], overwrite: bool) -> str:
    """Create or check the output folder. Returns ``"new"``, ``"resume"`` or ``"complete"``."""
    check_compressed_output(out)
    for name, state in ((MANIFEST_FILE, "complete"), (JOB_FILE, "resume")):
        file = out / name
        if not file.exists():
            continue
        previous = read_json_object(file)
        previous = previous.get("job", previous) if name == MANIFEST_FILE else previous
        if overwrite:
            shutil.rmtree(out)
            break
        if previous == params:
            return state
        raise CompressionError(
            f"{out}: holds a run with different parameters ({', '.join(_diff_keys(previous, params))}); "
            "pass --overwrite to start over, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / JOB_FILE, params)
    return "new"


def _clean_temporaries(out: Path) -> None:
    """Remove temporary files an interrupted run left behind (``atomic_file`` writes ``.<name>.*.tmp``)."""
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _store_embeddings(out: Path, table: ItemEmbeddingTable) -> None:
    file = out / EMBEDDINGS_FILE
    if not file.exists():
        save_npy_atomic(file, table.table)


def _finish(out: Path, params: dict[str, Any], num_users: int, users_per_part: int) -> tuple[int, int]:
    """Write ``user_offsets.npy`` and ``manifest.json`` from the part files, reading one part at a time.
    Returns (clusters, behaviors)."""
    partitions, counts, behaviors, clusters, last = [], np.zeros(num_users, np.int64), 0, 0, -1
    for p in range(-(-num_users // users_per_part)):
        t = pq.read_table(out / part_name(p), columns=["user_id", "cluster_size"])
        users = t.column("user_id").to_numpy()
        behaviors += int(t.column("cluster_size").to_numpy().sum())
        clusters += t.num_rows
        partitions.append({"file": part_name(p), "user_start": p * users_per_part,
                           "user_end": min((p + 1) * users_per_part, num_users), "rows": t.num_rows})
        if not len(users):
            continue
        if users[0] < last or (np.diff(users) < 0).any() or users[0] < 0 or users[-1] >= num_users:
            raise CompressionError(f"{out}: part files are not in user order; delete the folder and rerun")
        per_user = np.bincount(users - users[0])
        counts[users[0]:users[0] + len(per_user)] += per_user
        last = int(users[-1])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    save_npy_atomic(out / OFFSETS_FILE, offsets)
    manifest = {
        "kind": KIND, "format_version": FORMAT_VERSION,
        "dataset_fingerprint": params["dataset"]["fingerprint"], "dataset_path": params["dataset"]["path"],
        "snapshot_ts": params["snapshot_ts"], "cluster_config": params["cluster_config"], "seed": params["seed"],
        "embeddings": params["embeddings"], "embedding_dim": params["embedding_dim"],
        "mean_features": params["mean_features"], "member_share_features": params["member_share_features"],
        "users_per_part": users_per_part,
        "num_users": num_users, "users_with_clusters": int((np.diff(offsets) > 0).sum()),
        "num_clusters": clusters, "num_behaviors": behaviors,
        "incremental_from": params.get("base"), "partitions": partitions, "job": params,
    }
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return clusters, behaviors


def _part_tasks(ds: Dataset, events: EventFile, lo_rows: np.ndarray, hi_rows: np.ndarray, parts: list[int],
                users_per_part: int, out: Path, base: Path | None = None, quantile_groups: int | None = None
                ) -> Iterator[PartTask]:
    """Descriptors of ``parts``; user ``u`` contributes rows ``lo_rows[u]:hi_rows[u]``."""
    offsets = ds.histories.offsets
    num_users = len(offsets) - 1
    for p in parts:
        u0, u1 = p * users_per_part, min((p + 1) * users_per_part, num_users)
        yield PartTask(
            index=p, user_start=u0, user_end=u1, events=events, offsets=offsets[u0:u1 + 1].copy(),
            lo_rows=lo_rows[u0:u1].copy(), hi_rows=hi_rows[u0:u1].copy(), out_file=str(out / part_name(p)),
            incremental=base is not None,
            base_file=str(base / part_name(p)) if base is not None and (base / part_name(p)).exists() else None,
            quantile_groups=quantile_groups,
        )


def _run(ds: Dataset, events: EventFile, out: Path, params: dict[str, Any], comp: UserCompressor,
         table: ItemEmbeddingTable, lo_rows: np.ndarray, hi_rows: np.ndarray, *, backend: str, workers: int,
         overwrite: bool, progress: bool, spark_master: str | None, base: Path | None,
         quantile_groups: int | None, after_part: Callable[[int], None] | None, start: float,
         timings: dict[str, float]) -> CompressSummary:
    """Shared driver of full and incremental runs: prepare, process pending parts, finish.

    ``start`` is when the caller began (``time.perf_counter``); ``timings`` holds its phases so far.
    """
    num_users, users_per_part = ds.manifest.num_users, params["users_per_part"]
    num_parts = -(-num_users // users_per_part)
    state = _prepare_out(out, params, overwrite)
    behaviors_in = int((hi_rows - lo_rows).sum())
    if state == "complete":
        manifest = read_compressed_manifest(out)
        return CompressSummary(str(out), backend, workers, params["snapshot_ts"], num_users,
                               manifest["num_behaviors"], 0, manifest["num_clusters"],
                               time.perf_counter() - start, 0, num_parts, base is not None,
                               already_complete=True, timings=timings)
    _clean_temporaries(out)
    _store_embeddings(out, table)
    pending = [p for p in range(num_parts) if not (out / part_name(p)).exists()]
    cluster_start = time.perf_counter()
    if backend == "spark":
        from twinv2.compress.spark import run_spark_parts

        run_spark_parts(comp, ds, out, pending, users_per_part, params["snapshot_ts"], workers=workers,
                        master=spark_master)
    else:
        user_counts = {p: min((p + 1) * users_per_part, num_users) - p * users_per_part for p in pending}
        with make_progress(show=progress) as bar:
            task_id = bar.add_task("compressing", total=sum(user_counts.values()), info="users")
            done = 0

            def on_result(result: PartResult) -> None:
                nonlocal done
                bar.advance(task_id, result.users)
                done += 1
                if after_part is not None:
                    after_part(done)

            tasks = _part_tasks(ds, events, lo_rows, hi_rows, pending, users_per_part, out, base, quantile_groups)
            # A worker costs about a second to start: never start more than there are parts.
            _run_local(comp, tasks, max(1, min(workers, len(pending))), out / EMBEDDINGS_FILE, on_result)
    timings["cluster_s"] = time.perf_counter() - cluster_start
    num_clusters, num_behaviors = _finish(out, params, num_users, users_per_part)
    return CompressSummary(str(out), backend, workers, params["snapshot_ts"], num_users, num_behaviors,
                           behaviors_in, num_clusters, time.perf_counter() - start, len(pending),
                           num_parts - len(pending), base is not None, timings=timings)


def _check_common(out: Path, dataset: Path, backend: str, workers: int, users_per_part: int) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"--backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}")
    if not isinstance(users_per_part, int) or users_per_part < 1:
        raise ConfigError(f"users_per_part must be an integer >= 1, got {users_per_part!r}")
    if out.resolve() == dataset.resolve() or dataset.resolve() in out.resolve().parents:
        raise CompressionError(f"--out {out} must not be inside the dataset folder {dataset}")


def compress_dataset(dataset: str | os.PathLike, out: str | os.PathLike, snapshot_ts: int, *,
                     embeddings: EmbeddingSource | str | None = None, config: ClusterConfig | None = None,
                     backend: str = "local", workers: int = 1, seed: int | np.random.Generator = 0,
                     users_per_part: int = DEFAULT_USERS_PER_PART, overwrite: bool = False,
                     progress: bool = True, spark_master: str | None = None,
                     _after_part: Callable[[int], None] | None = None) -> CompressSummary:
    """Compress every user's behaviors strictly before ``snapshot_ts`` into virtual items.

    Args:
        dataset: dataset folder. out: output folder (created; resumed when it holds an unfinished run with
            the same parameters).
        snapshot_ts: seconds; behaviors at or after it are never read.
        embeddings: source (default: co-occurrence embeddings learned before the snapshot).
        config: clustering configuration (default :class:`ClusterConfig`); ``config.split_by`` (an
            inherent categorical of the dataset, e.g. ``"category_id"``) clusters within (completion group
            x value) so that no cluster mixes two values.
        backend: ``local`` or ``spark``; workers: worker processes (local) or local Spark cores.
        seed: base seed; user ``u`` clusters with ``default_rng([seed, u])``.
        users_per_part: users per part file (the unit of resumption).
        overwrite: discard a previous run in ``out`` instead of resuming it.
        progress: show a progress bar on stderr.
        spark_master: Spark master URL (default ``local[workers]``, or the one of ``spark-submit``).
    Returns:
        :class:`CompressSummary`.
    Raises:
        CompressionError, ConfigError, EmbeddingError, DataValidationError: bad inputs; nothing is
        written when the dataset or the embeddings are rejected.

    Example:
        >>> s = compress_dataset("data/synth", "out/c", snapshot_ts=1_700_000_000)  # doctest: +SKIP
        >>> s.num_clusters / s.num_behaviors  # doctest: +SKIP
        0.12
    """
    start = time.perf_counter()
    dataset, out = Path(dataset), Path(out)
    _check_common(out, dataset, backend, workers, users_per_part)
    config = config or ClusterConfig()
    seed = _seed_int(seed)
    source = embeddings if isinstance(embeddings, EmbeddingSource) else EmbeddingSource.parse(embeddings)
    snapshot_ts = int(snapshot_ts)
    ds, events = open_dataset_events(dataset)
    check_split_by(config.split_by, ds)
    offsets = ds.histories.offsets
    mean_names = mean_feature_names(ds.manifest)
    (before,), used = scan_events(ds, events, [snapshot_ts])
    lo_rows = offsets[:-1]
    hi_rows = lo_rows + before
    if before.sum() == 0:
        raise CompressionError(f"{dataset}: no behavior before --snapshot-ts {snapshot_ts} (events span "
                               f"{ds.manifest.time_min}..{ds.manifest.time_max})")
    _release_memory()
    timings = {"load_s": time.perf_counter() - start}
    table = item_embedding_table(source, ds, before_ts=snapshot_ts, seed=seed, normalize=config.normalize,
                                 chunks=events.chunks_before(offsets, hi_rows, CHUNK_ROWS), used=used,
                                 memory_bytes=COOCCURRENCE_MEMORY)
    _release_memory()
    timings["embeddings_s"] = time.perf_counter() - start - timings["load_s"]
    params = {
        "kind": KIND, "format_version": FORMAT_VERSION, "mode": "full", "dataset": _dataset_params(ds),
        "snapshot_ts": snapshot_ts, "cluster_config": asdict(config), "seed": seed,
        "users_per_part": users_per_part, "embeddings": table.source, "embedding_dim": table.dim,
        "embeddings_sha256": table.sha256(), "mean_features": mean_names,
        "member_share_features": _categorical_names(ds), "base": None,
    }
    comp = UserCompressor(table.table, _item_numerics(ds), events.cross, mean_names, config, snapshot_ts,
                          seed).with_item_categoricals(ds.items, _categorical_names(ds))
    return _run(ds, events, out, params, comp, table, lo_rows, hi_rows, backend=backend, workers=workers,
                overwrite=overwrite, progress=progress, spark_master=spark_master, base=None,
                quantile_groups=None, after_part=_after_part, start=start, timings=timings)


def _check_base_covers(base: Path, manifest: dict[str, Any], ds: Dataset, lo_rows: np.ndarray) -> None:
    """Every part of ``base`` is readable and its clusters hold exactly each user's behaviors before the base
    snapshot in ``ds``: the schema fingerprint alone does not tell two datasets of one schema apart. Reads
    one part at a time (the checks of :func:`twinv2.compress.store.load_compressed`)."""
    n = int(manifest["num_users"])
    wanted = list(BASE_COLUMNS) + [f"mean_{name}" for name in manifest["mean_features"]] + ["mean_sq_dist"]
    clusters, members, rows = np.zeros(n, np.int64), np.zeros(n, np.int64), 0
    for part in manifest["partitions"]:
        file = base / part["file"]
        try:
            t = pq.read_table(file, columns=wanted)
        except (OSError, pa.ArrowInvalid) as exc:
            raise DataValidationError(str(file), None, f"a part file with columns {wanted}",
                                      str(exc).splitlines()[0]) from exc
        users = t.column("user_id").to_numpy()
        sizes = t.column("cluster_size").to_numpy()
        rows += t.num_rows
        if not len(users):
            continue
        if users.min() < 0 or users.max() >= n:
            raise DataValidationError(str(file), "user_id", f"user ids below {n}", str(users.max()))
        first = int(users.min())  # a part holds a narrow range of users
        per_user = np.bincount(users - first)
        clusters[first:first + len(per_user)] += per_user
        np.add.at(members, users, sizes)
    offsets_file = base / OFFSETS_FILE
    offsets = load_npy(offsets_file) if offsets_file.exists() else None
    if offsets is None or offsets.dtype.kind not in "iu" or offsets.shape != (n + 1,) or offsets[-1] != rows:
        raise DataValidationError(str(offsets_file), None, f"int64 CSR offsets of length {n + 1} ending at {rows}")
    if not np.array_equal(np.diff(offsets), clusters):
        raise DataValidationError(str(offsets_file), "user_id", "offsets matching the parts' user ids")
    offsets = ds.histories.offsets
    before = lo_rows[:n] - offsets[:n]
    bad = np.flatnonzero(members != before)
    if bad.size:
        u = int(bad[0])
        raise CompressionError(
            f"{base}: compressed life cycles of another dataset: user {u} has {int(before[u])} behaviors before "
            f"the base snapshot in {ds.path} but {int(members[u])} in the base's clusters "
            f"({bad.size} users differ); compress this dataset from scratch instead")


def compress_incremental(base: str | os.PathLike, dataset: str | os.PathLike, out: str | os.PathLike,
                         snapshot_ts: int, *, workers: int = 1, overwrite: bool = False, progress: bool = True,
                         split_by: str | EllipsisType | None = ...,
                         _after_part: Callable[[int], None] | None = None) -> CompressSummary:
    """Fold the behaviors in ``[base snapshot, snapshot_ts)`` into the clusters of ``base``; write ``out``.

    Each new behavior (oldest first) joins the nearest cluster of its completion group (and, if ``base``
    was built with ``split_by``, of its value of that categorical) that has fewer than gamma members, else
    opens a new cluster (:func:`twinv2.compress.cluster.assign_incremental`); running means, centroids and
    representatives are updated. The configuration, seed, embedding table and part layout are those of
    ``base``, which is never modified. Resumable like :func:`compress_dataset`.

    Args:
        split_by: ``...`` (default) keeps the base's ``split_by``; a name or None states the split the
            caller expects, and a base built with another one is refused.

    Raises:
        CompressionError: ``base`` unfinished or from another dataset or another ``split_by``,
            ``snapshot_ts`` not after its snapshot, or ``out`` equal to ``base``.
    """
    start = time.perf_counter()
    base, dataset, out = Path(base), Path(dataset), Path(out)
    _check_common(out, dataset, "local", workers, 1)
    if out.resolve() == base.resolve():
        raise CompressionError(f"--out {out} is the --base folder: incremental runs write a new folder")
    base_manifest = read_compressed_manifest(base)
    ds, events = open_dataset_events(dataset)
    if base_manifest["dataset_fingerprint"] != ds.manifest.fingerprint():
        raise CompressionError(f"{base}: compressed from a dataset with fingerprint "
                               f"{base_manifest['dataset_fingerprint']}, {dataset} has {ds.manifest.fingerprint()}")
    old_snapshot, snapshot_ts = int(base_manifest["snapshot_ts"]), int(snapshot_ts)
    if snapshot_ts <= old_snapshot:
        raise CompressionError(f"--snapshot-ts {snapshot_ts} must be after the base snapshot {old_snapshot}")
    if ds.manifest.num_users < base_manifest["num_users"]:
        raise CompressionError(f"{dataset} has {ds.manifest.num_users} users, fewer than the "
                               f"{base_manifest['num_users']} of {base}")
    if mean_feature_names(ds.manifest) != base_manifest["mean_features"]:
        raise CompressionError(f"{base}: averaged features {base_manifest['mean_features']} differ from the "
                               f"dataset's {mean_feature_names(ds.manifest)}")
    config = ClusterConfig(**base_manifest["cluster_config"])
    if split_by is not ... and split_by != config.split_by:
        raise CompressionError(f"{base}: built with --split-by {config.split_by or 'none'}, not "
                               f"{split_by or 'none'}: an incremental run keeps its base's clustering (omit "
                               "--split-by to keep it, or compress from scratch)")
    check_split_by(config.split_by, ds)
    table_array = load_npy(base / EMBEDDINGS_FILE)
    if table_array.shape != (ds.manifest.num_items + 1, base_manifest["embedding_dim"]):
        raise EmbeddingError(f"{base / EMBEDDINGS_FILE}: dimension mismatch: shape {table_array.shape}, expected "
                             f"({ds.manifest.num_items + 1}, {base_manifest['embedding_dim']})")
    table = ItemEmbeddingTable(table_array, dict(base_manifest["embeddings"], inherited_from=str(base.resolve())))
    offsets = ds.histories.offsets
    (before_old, before_new), _ = scan_events(ds, events, [old_snapshot, snapshot_ts])
    lo_rows, hi_rows = offsets[:-1] + before_old, offsets[:-1] + before_new
    _check_base_covers(base, base_manifest, ds, lo_rows)
    users_per_part = int(base_manifest["users_per_part"])
    seed = int(base_manifest["seed"])
    params = {
        "kind": KIND, "format_version": FORMAT_VERSION, "mode": "incremental", "dataset": _dataset_params(ds),
        "snapshot_ts": snapshot_ts, "cluster_config": asdict(config), "seed": seed,
        "users_per_part": users_per_part, "embeddings": table.source, "embedding_dim": table.dim,
        "embeddings_sha256": table.sha256(), "mean_features": base_manifest["mean_features"],
        "member_share_features": _categorical_names(ds),
        "base": {"path": str(base.resolve()), "snapshot_ts": old_snapshot,
                 "num_clusters": base_manifest["num_clusters"], "job": base_manifest.get("job")},
    }
    # Quantile bins: a new behavior's group uses the cuts of the user's history before the base snapshot.
    quantile_groups = config.num_groups if config.group_bins == "quantile" else None
    comp = UserCompressor(table.table, _item_numerics(ds), events.cross, mean_feature_names(ds.manifest), config,
                          snapshot_ts, seed).with_item_categoricals(ds.items, _categorical_names(ds))
    return _run(ds, events, out, params, comp, table, lo_rows, hi_rows, backend="local", workers=workers,
                overwrite=overwrite, progress=progress, spark_master=None, base=base,
                quantile_groups=quantile_groups, after_part=_after_part, start=start,
                timings={"load_s": time.perf_counter() - start})


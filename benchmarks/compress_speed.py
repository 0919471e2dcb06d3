"""Time the per-user life-cycle clustering against a straightforward scikit-learn reference.

Usage:
    python benchmarks/compress_speed.py --out FILE.json [--sizes 100000 1000000] [--repeats 3]
        [--throughput-users 200] [--workers 2] [--reference-limit-s 240] [--seed 0]

Cases: one user with ``n`` behaviors for each ``--sizes`` value; 64-d embeddings drawn from a mixture of
200 Gaussian blobs (unit noise per coordinate around centres of norm ~16, so the blobs overlap like
real interests do); completion ratios uniform on [0, 1] (five groups of ~n/5). Both implementations use
``ClusterConfig()`` defaults (gamma 20, 5 uniform groups, k = max(2, floor(n^0.3)), 20 Lloyd passes, L2
normalisation):

- timing policy, the same for both sides: one untimed warm-up run each on the case's input (first touch
  of memory, library caches), then ``--repeats`` rounds of one timed run each, alternating (a change of
  load on a shared machine hits both sides alike); the figure is the median wall time (``_cpu_s``:
  median process CPU time; ``_min_s``: the fastest run). Imports and numba compilation happen before any
  timing: scikit-learn is imported up front (``reference_import_s``), and numba compilation (or loading
  numba's on-disk cache) is timed separately (``compile_s`` in this process, ``compile_cold_s`` in a fresh
  interpreter with an empty numba cache);
- ours: :func:`twinv2.compress.cluster_life_cycle`;
- reference: ``_reference_cluster_life_cycle`` — recursive scikit-learn ``KMeans`` (k-means++,
  ``n_init=1``, ``max_iter=20``, Lloyd), one call per split, same groups, same size rule, same degenerate
  guard. When its projected time per run (from the previous case, scaled by n) exceeds
  ``--reference-limit-s``, it is timed on a random 1/10 subsample and scaled linearly by 10 (an
  extrapolation, and an underestimate: deeper trees cost more per behavior), and quality is compared on
  that subsample; the case then says ``reference_mode: "subsample_x10"`` and ``reference_extrapolated``;
- quality: mean squared distance of each behavior's normalised embedding to its cluster centroid;
  ``quality_ratio`` = ours / reference (lower is better, 1.0 = same);
- memory: one run of ours in a fresh interpreter whose glibc returns freed blocks to the OS at once; peak
  resident memory above the resident memory before the call (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``), divided by the bytes of the embedding matrix.
  ``peak_memory_over_embeddings`` counts the caller's matrix too (= extra + 1). A probe that cannot measure
  (no ``/proc``, no glibc) gives ``null``, and the memory target is then ``null`` (not measured), not a pass.

Every timed figure runs with one maths thread (NUMBA_NUM_THREADS, OMP/MKL/OPENBLAS threads = 1, set
before numpy is imported). The machine may be shared: wall and CPU times are both reported.

Throughput: ``--throughput-users`` users with log-uniform sizes in [100, 30000] (seeded), clustered by a
``multiprocessing`` pool of ``--workers`` processes (one maths thread each, fork start method so the
workers share the parent's arrays); ``throughput_behaviors_per_s`` = behaviors / wall time of the pool
run (kernels already compiled in every worker). :func:`measure_throughput` is the function to swap for
the real ``twinv2 compress`` job.

Output: a rich table and ``--out`` JSON with a list ``cases`` (``n``, ``ours_s``, ``reference_s``,
``speedup``, ``quality_ratio``, memory fields, ...) and ``throughput_behaviors_per_s``.
"""

from __future__ import annotations

import os

for _var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy / numba / sklearn are imported: one maths thread everywhere

import argparse  # noqa: E402
import ctypes  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from twinv2._io import write_json_atomic  # noqa: E402
from twinv2.compress import kmeans  # noqa: E402
from twinv2.compress.cluster import (  # noqa: E402
    ClusterConfig,
    ClusterResult,
    _reference_cluster_life_cycle,
    cluster_life_cycle,
)

DIM = 64
NUM_BLOBS = 200
TARGET_SPEEDUP = 10.0
TARGET_QUALITY_RATIO = 1.02
TARGET_SECONDS_AT_1M = 2.0
TARGET_MEMORY_OVER_EMBEDDINGS = 3.0


def synthetic_user(n: int, seed: int, d: int = DIM) -> tuple[np.ndarray, np.ndarray]:
    """One user's behaviors: float32 embeddings ``[n, d]`` (Gaussian blobs) and completion ratios ``[n]``.

    Built in chunks so that generating a 10^6 x 64 matrix does not need several copies of it.
    """
    rng = np.random.default_rng([seed, n])
    centers = (rng.standard_normal((NUM_BLOBS, d)) * 2.0).astype(np.float32)
    emb = np.empty((n, d), dtype=np.float32)
    for start in range(0, n, 1 << 16):
        stop = min(n, start + (1 << 16))
        which = rng.integers(0, NUM_BLOBS, stop - start)
        emb[start:stop] = centers[which] + rng.standard_normal((stop - start, d), dtype=np.float32)
    ratio = rng.uniform(0.0, 1.0, n).astype(np.float32)
    return emb, ratio


def leaf_quality(emb: np.ndarray, result: ClusterResult) -> float:
    """Mean squared distance of each normalised embedding to its cluster centroid (chunked, float64)."""
    total = 0.0
    for start in range(0, len(emb), 1 << 16):
        x = emb[start:start + (1 << 16)].astype(np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
        total += float(((x - result.centroids[result.labels[start:start + (1 << 16)]]) ** 2).sum())
    return total / max(len(emb), 1)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            match = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _release_freed_memory_eagerly() -> bool:
    """Make glibc return every freed block of >= 64 KiB to the OS at once, so resident memory = live memory.

    Without it, freed buffers stay resident in the heap and a later allocation reuses them unseen.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD: big blocks get their own mapping, unmapped on free
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def peak_extra_bytes(fn) -> int | None:
    """Peak resident memory ``fn()`` adds above the resident memory before the call (Linux only)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM (the peak) to the current resident size
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    if before is None or peak is None:
        return None
    return max(0, peak - before) * 1024


def measure_memory(n: int, seed: int) -> int | None:
    """Peak extra resident bytes of one ``cluster_life_cycle`` call on the ``n``-behavior user.

    Runs in a fresh interpreter (``--memory-probe``) so that no freed heap of earlier work hides the peak.
    """
    out = subprocess.run([sys.executable, __file__, "--memory-probe", str(n), "--seed", str(seed)],
                         capture_output=True, text=True, check=False)
    match = re.search(r"^PEAK_EXTRA_BYTES=(\d+)$", out.stdout, re.MULTILINE)
    return int(match.group(1)) if match else None


def cold_compile_seconds() -> float | None:
    """Seconds :func:`kmeans.warmup` takes in a fresh interpreter with an empty numba cache (first run ever)."""
    with tempfile.TemporaryDirectory() as cache:
        out = subprocess.run([sys.executable, "-c", "from twinv2.compress import kmeans; print(kmeans.warmup())"],
                             capture_output=True, text=True, check=False,
                             env={**os.environ, "NUMBA_CACHE_DIR": cache})
    try:
        return float(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def _memory_probe(n: int, seed: int) -> None:
    if not _release_freed_memory_eagerly():
        return
    emb, ratio = synthetic_user(n, seed)
    kmeans.warmup()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    extra = peak_extra_bytes(lambda: cluster_life_cycle(emb, ratio, ClusterConfig(), seed))
    if extra is not None:
        print(f"PEAK_EXTRA_BYTES={extra}")


def time_call(fn) -> tuple[float, float, Any]:
    """Wall seconds, process CPU seconds and the result of ``fn()``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def alternating_runs(fns: list, repeats: int) -> list[tuple[list[float], list[float], Any]]:
    """The timing policy of both sides: one untimed warm-up call of each function, then ``repeats`` rounds
    of one timed call of each, alternating (on a shared machine, a change of load hits both sides alike).

    Returns, per function, the sorted wall times, the sorted CPU times and the last result."""
    for fn in fns:
        fn()  # warm-up: first touch of fresh memory pages, library caches
    runs: list[list[tuple[float, float, Any]]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            runs[i].append(time_call(fn))
    return [(sorted(r[0] for r in rs), sorted(r[1] for r in rs), rs[-1][2]) for rs in runs]


def import_reference() -> float:
    """Import scikit-learn's k-means before any timing; returns the seconds the import took."""
    start = time.perf_counter()
    import sklearn.cluster
    import sklearn.exceptions  # noqa: F401

    return time.perf_counter() - start


def run_case(n: int, config: ClusterConfig, repeats: int, seed: int, previous: dict | None,
             reference_limit_s: float, console: Console) -> dict[str, Any]:
    """Ours vs the reference on one synthetic user of ``n`` behaviors."""
    console.log(f"n={n:,}: generating {n:,} x {DIM} embeddings")
    emb, ratio = synthetic_user(n, seed)
    projected = None
    if previous is not None:
        projected = previous["reference_s"] * n / previous["n"]
    mode = "full"
    if projected is not None and projected > reference_limit_s:
        mode = "subsample_x10"
        pick = np.sort(np.random.default_rng([seed, n, 1]).choice(n, n // 10, replace=False))
        ref_emb, ref_ratio = emb[pick], ratio[pick]
        console.log(f"n={n:,}: reference projected at {projected:.0f}s > {reference_limit_s:.0f}s per run, "
                    f"timing it on a {len(pick):,}-behavior subsample and scaling by 10")
    else:
        ref_emb, ref_ratio = emb, ratio
    console.log(f"n={n:,}: ours and the scikit-learn reference: one warm-up run each, then {repeats} "
                "alternating timed runs" + (f" (reference projected {projected:.0f}s each)" if projected else ""))
    (walls, cpus, result), (ref_walls, ref_cpus, ref_result) = alternating_runs(
        [lambda: cluster_life_cycle(emb, ratio, config, seed),
         lambda: _reference_cluster_life_cycle(ref_emb, ref_ratio, config, seed)], repeats)
    quality_ours = leaf_quality(emb, result)
    extra = measure_memory(n, seed)
    console.log(f"n={n:,}: ours median {np.median(walls):.3f}s wall, {np.median(cpus):.3f}s CPU; "
                f"{len(result.sizes):,} clusters")
    quality_ref = leaf_quality(ref_emb, ref_result)
    scale = 10 if mode == "subsample_x10" else 1
    if mode == "subsample_x10":
        sub_ours = cluster_life_cycle(ref_emb, ref_ratio, config, seed)
        quality_compared = leaf_quality(ref_emb, sub_ours)
    else:
        quality_compared = quality_ours
    ref_wall, ref_cpu = float(np.median(ref_walls)) * scale, float(np.median(ref_cpus)) * scale
    console.log(f"n={n:,}: reference median {ref_wall:.1f}s wall, {ref_cpu:.1f}s CPU"
                + (" (x10 from the subsample)" if scale > 1 else ""))
    ours_s = float(np.median(walls))
    ours_cpu_s = float(np.median(cpus))
    emb_bytes = emb.nbytes
    return {
        "n": n,
        "d": DIM,
        "ours_s": ours_s,
        "ours_min_s": walls[0],
        "ours_cpu_s": ours_cpu_s,
        "repeats": repeats,
        "reference_s": ref_wall,
        "reference_min_s": ref_walls[0] * scale,
        "reference_cpu_s": ref_cpu,
        "reference_mode": mode,
        "reference_extrapolated": scale > 1,
        "speedup": ref_wall / ours_s,
        "speedup_cpu": ref_cpu / ours_cpu_s,
        "quality_ours": quality_compared,
        "quality_reference": quality_ref,
        "quality_ratio": quality_compared / quality_ref,
        "quality_ours_full": quality_ours,
        "clusters_ours": len(result.sizes),
        "clusters_reference": len(ref_result.sizes),
        "degenerate_splits": int(result.degenerate_splits),
        "embedding_bytes": emb_bytes,
        "peak_extra_bytes": extra,
        "peak_extra_over_embeddings": None if extra is None else extra / emb_bytes,
        "peak_memory_over_embeddings": None if extra is None else 1.0 + extra / emb_bytes,
    }


# ---- throughput --------------------------------------------------------------------------------------

_SHARED: dict[str, Any] = {}  # filled by the parent before forking; read by the workers


def _worker_init() -> None:
    kmeans.warmup()


def _cluster_one_user(user: int) -> tuple[int, float]:
    lo, hi = _SHARED["offsets"][user], _SHARED["offsets"][user + 1]
    start = time.perf_counter()
    cluster_life_cycle(_SHARED["emb"][lo:hi], _SHARED["ratio"][lo:hi], _SHARED["config"],
                       np.random.default_rng([_SHARED["seed"], user]))
    return int(hi - lo), time.perf_counter() - start


def measure_throughput(num_users: int, workers: int, config: ClusterConfig, seed: int) -> dict[str, Any]:
    """Behaviors per second for many synthetic users clustered by a pool of ``workers`` processes.

    Users have log-uniform sizes in [100, 30000]; each is clustered with its own generator
    ``default_rng([seed, user])`` as the compression job does. Larger users are submitted first so the
    pool ends balanced. Returns the figures (``throughput_behaviors_per_s`` = behaviors / pool wall time).
    """
    rng = np.random.default_rng([seed, 7])
    sizes = np.exp(rng.uniform(np.log(100), np.log(30_000), num_users)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    total = int(offsets[-1])
    emb = np.empty((total, DIM), dtype=np.float32)
    ratio = np.empty(total, dtype=np.float32)
    for user in range(num_users):
        emb[offsets[user]:offsets[user + 1]], ratio[offsets[user]:offsets[user + 1]] = synthetic_user(
            int(sizes[user]), seed + 1 + user)
    _SHARED.update(emb=emb, ratio=ratio, offsets=offsets, config=config, seed=seed)
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_worker_init) as pool:
        pool.map(_worker_init_barrier, range(workers))  # workers are up and compiled before the clock starts
        start = time.perf_counter()
        per_user = pool.map(_cluster_one_user, np.argsort(-sizes).tolist(), chunksize=1)
        wall = time.perf_counter() - start
    _SHARED.clear()
    busy = sum(s for _, s in per_user)
    return {
        "users": num_users,
        "behaviors": total,
        "workers": workers,
        "wall_s": wall,
        "throughput_behaviors_per_s": total / wall,
        "busy_s": busy,
        "per_worker_behaviors_per_s": total / busy,
    }


def _worker_init_barrier(_: int) -> None:
    time.sleep(0.05)


# ---- main --------------------------------------------------------------------------------------------


def print_table(console: Console, cases: list[dict[str, Any]], throughput: dict[str, Any] | None,
                compile_s: float) -> None:
    table = Table(title=f"Per-user clustering, {DIM}-d, one thread (numba kernels: {compile_s:.1f}s to load, "
                        "compiled outside the timings)")
    for col in ("n", "ours s (cpu)", "reference s (cpu)", "speed-up", "quality ours/ref", "clusters ours/ref",
                "peak mem / emb"):
        table.add_column(col, justify="right")
    for c in cases:
        ref = f"{c['reference_s']:.1f} ({c['reference_cpu_s']:.1f})"
        if c["reference_mode"] != "full":
            ref += " *"
        mem = "n/a" if c["peak_memory_over_embeddings"] is None else f"{c['peak_memory_over_embeddings']:.2f}x"
        table.add_row(f"{c['n']:,}", f"{c['ours_s']:.3f} ({c['ours_cpu_s']:.3f})", ref, f"{c['speedup']:.1f}x",
                      f"{c['quality_ratio']:.4f}", f"{c['clusters_ours']:,}/{c['clusters_reference']:,}", mem)
    console.print(table)
    console.print(f"timing: both sides get one untimed warm-up run, then {cases[0]['repeats'] if cases else 0} "
                  "alternating timed runs (median shown)")
    if any(c["reference_mode"] != "full" for c in cases):
        console.print("* reference extrapolated: timed on a 1/10 subsample and scaled by 10 (quality on that "
                      "subsample)")
    if any(c["peak_memory_over_embeddings"] is None for c in cases):
        console.print("memory: the probe could not measure (n/a): the memory target is not evaluated")
    if throughput:
        console.print(f"throughput: {throughput['behaviors']:,} behaviors of {throughput['users']} users with "
                      f"{throughput['workers']} workers in {throughput['wall_s']:.2f}s = "
                      f"{throughput['throughput_behaviors_per_s']:,.0f} behaviors/s")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--memory-probe", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", help="JSON file to write (required)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--throughput-users", type=int, default=200, help="0 skips the throughput run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reference-limit-s", type=float, default=240.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.memory_probe is not None:
        _memory_probe(args.memory_probe, args.seed)
        return {}
    if not args.out:
        parser.error("--out is required")
    console = Console(width=120)
    config = ClusterConfig()
    cold_s = cold_compile_seconds()
    compile_s = kmeans.warmup()
    reference_import_s = import_reference()
    console.log(f"numba kernels: {cold_s or float('nan'):.1f}s to compile from scratch, {compile_s:.1f}s here "
                "(on-disk cache)")
    cases: list[dict[str, Any]] = []
    for n in sorted(args.sizes):
        cases.append(run_case(n, config, args.repeats, args.seed, cases[-1] if cases else None,
                              args.reference_limit_s, console))
    throughput = None
    if args.throughput_users > 0:
        console.log(f"throughput: {args.throughput_users} users, {args.workers} workers")
        throughput = measure_throughput(args.throughput_users, args.workers, config, args.seed)
    at_1m = [c for c in cases if c["n"] >= 1_000_000]
    result: dict[str, Any] = {
        "benchmark": "compress_speed",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "threads": 1,
        "config": asdict(config),
        "kernel_constants": {name: getattr(kmeans, name) for name in (
            "SEED_SAMPLE_PER_CLUSTER", "SEED_TRIALS", "TRAIN_SAMPLE_PER_CLUSTER", "SETTLED_FRACTION",
            "SETTLED_MIN_MEMBERS", "SETTLED_MIN_ROOT")},
        "compile_s": compile_s,
        "compile_cold_s": cold_s,
        "reference_import_s": reference_import_s,
        "timing_policy": f"both sides: one untimed warm-up run each, then {args.repeats} alternating timed runs "
                         "each, median (imports and numba compilation before any timing)",
        "cases": cases,
        "throughput_behaviors_per_s": None if throughput is None else throughput["throughput_behaviors_per_s"],
        "throughput": throughput,
        "targets": {
            "speedup_at_1m_ge_10": all(c["speedup"] >= TARGET_SPEEDUP for c in at_1m) if at_1m else None,
            "quality_ratio_le_1_02": all(c["quality_ratio"] <= TARGET_QUALITY_RATIO for c in cases),
            "seconds_at_1m_le_2": all(c["ours_s"] <= TARGET_SECONDS_AT_1M for c in at_1m) if at_1m else None,
            "cpu_seconds_at_1m_le_2": all(c["ours_cpu_s"] <= TARGET_SECONDS_AT_1M for c in at_1m)
            if at_1m else None,
            # A failed probe (None) is "not measured", never a pass.
            "peak_memory_le_3x": None if any(c["peak_memory_over_embeddings"] is None for c in cases)
            else all(c["peak_memory_over_embeddings"] <= TARGET_MEMORY_OVER_EMBEDDINGS for c in cases),
        },
    }
    write_json_atomic(args.out, result)
    print_table(console, cases, throughput, compile_s)
    console.print(f"targets: {result['targets']}")
    console.print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()

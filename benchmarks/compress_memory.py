"""Peak memory of the local compression job at 10^7 and 10^8 behaviors (the whole process tree).

Usage:
    python benchmarks/compress_memory.py --out FILE.json [--sizes 1e7 1e8] [--data 1e8=/path/to/dataset]
        [--work DIR] [--workers 2] [--users-per-part 256] [--timeout-s 3600] [--pythonpath SRC]

For each size in ``--sizes`` the dataset is ``--data SIZE=PATH`` when given, else it is generated (once; a
folder left by an earlier run with the same parameters is reused) with
``twinv2 data synth --scale large --users N --seed 0`` where ``N = round(size / 700)`` (the ``large`` scale
has about 700 behaviors per user: 14,000 users give 9.8 M behaviors, 143,000 about 10^8). The job is then
``python -m twinv2 compress run --dataset D --out WORK/compressed-SIZE --snapshot-ts S --workers W --json
--overwrite``, run as a child process with S = time_min + 0.8 (time_max - time_min) of the dataset.

Memory: the resident set size (``VmRSS``) of the child and of every process below it (the workers) is
sampled every 50 ms from ``/proc`` and summed; ``peak_rss_bytes`` is the largest sum (shared pages, such as
the memory-mapped embedding table, count once per process: an upper bound). ``peak_process_rss_bytes`` is
the largest single process (``getrusage(RUSAGE_CHILDREN)`` max RSS). ``peak_tmp_bytes``: the most disk the
co-occurrence pairs took in the child's ``TMPDIR`` (``WORK/tmp-SIZE``, sampled once a second). Time: the
child's wall time, and ``behaviors_per_s`` = behaviors before the snapshot / wall time. Generation time is
reported apart and not included. ``--pythonpath SRC`` runs the job from another source tree (for example an
older checkout of ``src/``) to compare; the data and the sampling are the same.

Output: a table, and ``--out`` JSON with ``runs`` (one object per size) and, last,
``targets: {compress_1e7_peak_le_2gb, compress_1e8_peak_le_8gb}`` (GB = 10^9 bytes): booleans from the runs,
null for a size that was not run (or did not finish within ``--timeout-s``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from twinv2._io import write_json_atomic

BEHAVIORS_PER_USER = 700  # the `large` scale: 14,000 users -> 9.81 M behaviors
TARGETS = {"compress_1e7_peak_le_2gb": (1e7, 2e9), "compress_1e8_peak_le_8gb": (1e8, 8e9)}
SAMPLE_S = 0.05


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(x) for x in fh.read().split()]
    except OSError:
        pass
    return out


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss_bytes(pid: int) -> tuple[int, int]:
    """(sum of VmRSS over ``pid`` and its descendants, number of processes)."""
    todo, total, count = [pid], 0, 0
    while todo:
        p = todo.pop()
        total += _rss_bytes(p)
        count += 1
        todo += _children(p)
    return total, count


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (0 if it vanished meanwhile)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def run_sampled(cmd: list[str], env: dict[str, str], timeout_s: float, tmp: Path) -> dict[str, Any]:
    """Run ``cmd``, sampling its process tree's RSS (and, once a second, the bytes under its ``TMPDIR``
    ``tmp``); kill its process group after ``timeout_s``."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    peak, peak_procs, peak_tmp, timed_out = 0, 0, 0, False
    trace: list[tuple[float, int]] = []
    # Read the output in the background so a full pipe never blocks the child.
    import threading

    out: dict[str, str] = {}
    readers = [threading.Thread(target=lambda n=n, s=s: out.__setitem__(n, s.read()), daemon=True)
               for n, s in (("stdout", proc.stdout), ("stderr", proc.stderr))]
    for r in readers:
        r.start()
    while proc.poll() is None:
        total, count = tree_rss_bytes(proc.pid)
        if total > peak:
            peak, peak_procs = total, count
        elapsed = time.perf_counter() - start
        if not trace or elapsed - trace[-1][0] >= 1.0:
            trace.append((round(elapsed, 1), total))
            peak_tmp = max(peak_tmp, folder_bytes(tmp))
        if elapsed > timeout_s:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the child's own process group (start_new_session)
            proc.wait()
            break
        time.sleep(SAMPLE_S)
    wall = time.perf_counter() - start
    for r in readers:
        r.join()
    return {"returncode": proc.returncode, "timed_out": timed_out, "wall_s": round(wall, 2),
            "peak_rss_bytes": peak, "peak_processes": peak_procs, "peak_tmp_bytes": peak_tmp,
            "stdout": out.get("stdout", ""),
            "stderr": out.get("stderr", ""), "rss_trace": trace}


def _parse_size(text: str) -> int:
    return int(float(text))


def _size_label(size: int) -> str:
    exp = len(str(size)) - 1
    return f"1e{exp}" if size == 10 ** exp else str(size)


def ensure_dataset(size: int, work: Path, given: dict[int, Path], env: dict[str, str], console: Console
                   ) -> tuple[Path, float | None]:
    """The dataset of ``size`` (given, reused or generated) and the seconds its generation took (or None)."""
    if size in given:
        return given[size], None
    users = max(1, round(size / BEHAVIORS_PER_USER))
    path = work / f"synth-large-{users}u"
    manifest = path / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("num_users") == users:
        return path, None
    console.print(f"generating {path} ({users:,} users of the large scale)...")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "twinv2", "data", "synth", "--scale", "large", "--users", str(users),
                    "--seed", "0", "--out", str(path)], env=env, check=True, stdout=subprocess.DEVNULL)
    return path, round(time.perf_counter() - t, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="results JSON")
    p.add_argument("--sizes", nargs="+", default=["1e7", "1e8"], help="behaviors per dataset (e.g. 1e7 1e8)")
    p.add_argument("--data", nargs="*", default=[], metavar="SIZE=PATH", help="use this dataset for SIZE")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "twinv2_compress_memory")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--users-per-part", type=int, default=256)
    p.add_argument("--timeout-s", type=float, default=3600.0, help="give a run up after this long (null target)")
    p.add_argument("--pythonpath", default=None, help="run the job from this source tree instead (comparison)")
    p.add_argument("--keep", action="store_true", help="keep the compressed folders")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    sizes = [_parse_size(s) for s in args.sizes]
    given = {}
    for spec in args.data:
        size, _, path = spec.partition("=")
        given[_parse_size(size)] = Path(path)
    args.work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.pythonpath, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)

    runs = []
    for size in sizes:
        data, gen_s = ensure_dataset(size, args.work, given, env, console)
        meta = json.loads((data / "manifest.json").read_text())
        snapshot = meta["time_min"] + int(0.8 * (meta["time_max"] - meta["time_min"]))
        out = args.work / f"compressed-{_size_label(size)}"
        cmd = [sys.executable, "-m", "twinv2", "compress", "run", "--dataset", str(data), "--out", str(out),
               "--snapshot-ts", str(snapshot), "--workers", str(args.workers), "--users-per-part",
               str(args.users_per_part), "--json", "--quiet", "--overwrite"]
        console.print(f"compressing {data} ({meta['num_events']:,} behaviors, --workers {args.workers})...")
        before_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        tmp = args.work / f"tmp-{_size_label(size)}"  # the child's TMPDIR: the co-occurrence pairs on disk
        tmp.mkdir(exist_ok=True)
        r = run_sampled(cmd, {**env, "TMPDIR": str(tmp)}, args.timeout_s, tmp)
        max_child_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        summary: dict[str, Any] = {}
        if r["returncode"] == 0:
            summary = json.loads(r["stdout"])
        elif not r["timed_out"]:
            console.print(r["stderr"][-2000:])
        behaviors_in = summary.get("behaviors_in")
        run = {
            "size": _size_label(size), "dataset": str(data), "users": meta["num_users"],
            "behaviors": meta["num_events"], "behaviors_before_snapshot": behaviors_in, "snapshot_ts": snapshot,
            "workers": args.workers, "users_per_part": args.users_per_part, "ok": r["returncode"] == 0,
            "timed_out": r["timed_out"], "peak_rss_bytes": r["peak_rss_bytes"],
            "peak_rss_gb": round(r["peak_rss_bytes"] / 1e9, 3), "peak_processes": r["peak_processes"],
            "peak_tmp_bytes": r["peak_tmp_bytes"],
            # ru_maxrss of all children so far: this run's largest process unless an earlier one was larger.
            "peak_process_rss_bytes": max_child_kib * 1024 if max_child_kib > before_children else None,
            "wall_s": r["wall_s"], "behaviors_per_s": round(behaviors_in / r["wall_s"]) if behaviors_in else None,
            "virtual_items": summary.get("num_clusters"), "timings": summary.get("timings"),
            "generation_s": gen_s, "command": " ".join(cmd), "rss_trace_mib": [
                (t, round(b / 2**20)) for t, b in r["rss_trace"]],
        }
        runs.append(run)
        if not args.keep and out.exists():
            import shutil

            shutil.rmtree(out)

    table = Table(title=f"local compression, --workers {args.workers} (peak RSS: whole process tree)")
    for col in ("size", "behaviors", "before S", "virtual items", "peak RSS", "wall", "behaviors/s"):
        table.add_column(col, justify="right")
    for run in runs:
        table.add_row(run["size"], f"{run['behaviors']:,}", f"{run['behaviors_before_snapshot'] or 0:,}",
                      f"{run['virtual_items'] or 0:,}", f"{run['peak_rss_bytes'] / 1e9:.2f} GB",
                      f"{run['wall_s']:.0f} s" + (" (timed out)" if run["timed_out"] else ""),
                      f"{run['behaviors_per_s'] or 0:,}")
    Console(width=120).print(table)

    targets: dict[str, bool | None] = {}
    for name, (size, limit) in TARGETS.items():
        hit = [r for r in runs if r["size"] == _size_label(int(size)) and r["ok"]]
        targets[name] = (hit[0]["peak_rss_bytes"] <= limit) if hit else None
    result = {
        "benchmark": "compress_memory",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "pythonpath": args.pythonpath, "runs": runs, "targets": targets,
    }
    write_json_atomic(args.out, result)
    console.print(f"targets: {targets}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

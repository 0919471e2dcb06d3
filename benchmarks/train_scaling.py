"""Training throughput when it scales out: one process as before, batches built off the training thread, and
two ranks with gloo (DistributedDataParallel), side by side in one run on the same data.

    python benchmarks/train_scaling.py --out benchmarks/results/train_scaling.json

For each GSU length L (``--lengths``, default 500 and 1,000) and each repeat, three runs of ``twin`` train
the same ``--steps`` global batches of ``--batch-size`` samples (one epoch of exactly that many samples,
``train.seed`` 0, every other setting at its default):

- ``a_one_process``: ``train.loader_workers: 0``, the batches built on the training thread (the loop as
  it was before batches moved off the thread);
- ``b_off_thread``: one process, ``train.loader_workers: 1``;
- ``c_two_ranks_gloo``: ``torchrun --standalone --nproc-per-node 2``, each rank on its half of every global
  batch (loader workers and torch threads at their defaults for two ranks on this machine).

Each run is a fresh child process (``--child``); samples/s is the loop's own figure: samples of the global
batches over the training wall time (no validation, no start-up). The loss is the loop's running training
loss (an exponential moving average, factor 0.98) after the last global step; the 1-rank and 2-rank runs
train on the same global batches, so they agree up to float summation order. Repeats alternate the three
runs so that noise from other processes on the machine hits all three alike; the median is reported.

``--vocab N[,N...]`` (default: skipped) adds the memory of large item vocabularies: a dataset with N items
(and ``--vocab-events`` events over them) trains ``twin`` (L = 100, k = 50) for ``--vocab-steps`` steps with
sparse embedding gradients (``optim.sparse_embeddings``) and, up to ``--vocab-dense-limit`` items, with dense
ones, one child each, recording the peak resident memory (Linux ``VmHWM``: data, model, optimisers, steps,
the validation and the two checkpoints written) and the step time.

The JSON ends with ``targets``: ``speedup_ge_2`` (2 ranks vs one process at the largest L),
``loss_agreement_le_1pct`` (1-rank vs 2-rank loss, every L) and ``compress_1e8_peak_le_8gb`` (null: local
compression memory is measured by the compression benchmarks, not here).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("a_one_process", "b_off_thread", "c_two_ranks_gloo")


def _peak_rss_mb() -> float | None:
    """This process's peak resident set (``VmHWM``) in MB, where /proc has it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child(spec: dict[str, Any]) -> dict[str, Any] | None:
    """Train once as ``spec`` says (in this process, or as one rank of a torchrun job); rank 0 returns the record."""
    from rich.console import Console

    from twinv2.train.config import TrainConfig, apply_overrides
    from twinv2.train.loop import train_model

    config = apply_overrides(TrainConfig(), spec["overrides"])
    t0 = time.perf_counter()
    result = train_model(spec["dataset"], spec["out"], config, overwrite=True, show_progress=False,
                         console=Console(file=io.StringIO()))
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    return {"samples_per_second": result.samples_per_second, "train_seconds": result.train_seconds,
            "wall_seconds": time.perf_counter() - t0, "steps": result.steps,
            "loss": result.loss_curve[-1][1] if result.loss_curve else None,
            "world_size": result.extra.get("world_size", 1), "loader_workers": result.extra.get("loader_workers"),
            "peak_rss_mb": _peak_rss_mb()}


def _run_child(spec: dict[str, Any], nproc: int = 1) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", json.dumps(spec)]
    if nproc > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   __file__, "--child", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({' '.join(command[:6])} ...):\n{done.stderr[-4000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def _synth(work: Path) -> Path:
    """The default synthetic dataset under ``work`` (generated once: ``twinv2 data synth --scale default``)."""
    from twinv2.data.synth import synthesize
    from twinv2.demo import _synth_matches

    data = work / "synth_default"
    if not _synth_matches(data, "default", 0):
        synthesize(data, scale="default", seed=0)
    return data


def _vocab_dataset(work: Path, num_items: int, num_events: int) -> Path:
    """A dataset with ``num_items`` items and ``num_events`` events by 1,000 users, items drawn uniformly."""
    import numpy as np
    import pyarrow as pa

    from twinv2.data.schema import ColumnSpec
    from twinv2.data.store import write_dataset

    out = work / f"vocab_{num_items}"
    if (out / "manifest.json").is_file():
        return out
    rng = np.random.default_rng(0)
    users = np.sort(rng.integers(0, 1000, num_events))
    ts = np.zeros(num_events, np.int64)
    for u in np.unique(users):  # strictly increasing times per user
        rows = np.flatnonzero(users == u)
        ts[rows] = np.sort(rng.integers(0, 10**7, len(rows)))
    duration = rng.uniform(5, 120, num_items).astype(np.float32)
    item_id = rng.integers(1, num_items + 1, num_events)
    play = (rng.uniform(0, 1, num_events) * duration[item_id - 1]).astype(np.float32)
    items = pa.table({"item_id": pa.array(np.arange(1, num_items + 1), pa.int64()),
                      "category_id": pa.array(rng.integers(1, 100, num_items), pa.int64()),
                      "duration": pa.array(duration)})
    label = rng.integers(0, 2, num_events).astype(np.int8)
    completion = np.clip(play / duration[item_id - 1], 0, 1).astype(np.float32)
    events = pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(item_id, pa.int64()),
                       "ts": pa.array(ts, pa.int64()), "label": pa.array(label), "play_time": pa.array(play),
                       "completion_ratio": pa.array(completion)})
    write_dataset(out, name=f"vocab_{num_items}", source="train_scaling benchmark", items=items, events=events,
                  item_columns=[ColumnSpec("item_id", "id", "int64"),
                                ColumnSpec("category_id", "inherent_categorical", "int64", vocab_size=100),
                                ColumnSpec("duration", "inherent_numeric", "float32")],
                  event_columns=[ColumnSpec("user_id", "id", "int64"), ColumnSpec("item_id", "id", "int64"),
                                 ColumnSpec("ts", "timestamp", "int64"), ColumnSpec("label", "label", "int8"),
                                 ColumnSpec("play_time", "cross_numeric", "float32"),
                                 ColumnSpec("completion_ratio", "cross_numeric", "float32")])
    return out


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="results JSON (a .md table goes beside it)")
    p.add_argument("--dataset", type=Path, default=None, help="dataset folder (default: the default synthetic "
                   "dataset, generated under --work once)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "twinv2_train_scaling")
    p.add_argument("--lengths", default="500,1000", help="GSU lengths L, comma-separated")
    p.add_argument("--steps", type=int, default=40, help="global steps per run")
    p.add_argument("--batch-size", type=int, default=256, help="global batch size")
    p.add_argument("--esu-size", type=int, default=100)
    p.add_argument("--repeats", type=int, default=2, help="runs per (mode, L); the median is reported")
    p.add_argument("--vocab", default="", help="item counts N (comma-separated) whose memory to measure, dense "
                   "vs sparse embedding gradients (default: skip)")
    p.add_argument("--vocab-dense-limit", type=int, default=2_000_000, help="largest N also run with dense "
                   "gradients")
    p.add_argument("--vocab-events", type=int, default=1_000_000)
    p.add_argument("--vocab-id-dim", type=int, default=None, help="model.id_dim of the vocabulary runs "
                   "(default: the model's default)")
    p.add_argument("--vocab-steps", type=int, default=20)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        record = child(json.loads(args.child))
        if record is not None:
            print(json.dumps(record), flush=True)
        return 0
    if args.out is None:
        p.error("--out is required")
    from twinv2.train._runtime import available_cores
    from twinv2.train.report import markdown_table, write_text

    args.work.mkdir(parents=True, exist_ok=True)
    lengths = [int(x) for x in args.lengths.split(",") if x.strip()]  # "" = vocabulary only
    dataset = args.dataset or (_synth(args.work) if lengths else None)
    load_before = _load_average()
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for L in lengths:
        for rep in range(args.repeats):
            for mode in MODES:
                overrides = {"model.long_term": "twin", "data.long_len": L, "model.esu_size": args.esu_size,
                             "train.batch_size": args.batch_size, "train.epochs": 1, "train.max_steps": args.steps,
                             "data.max_train_samples": args.steps * args.batch_size, "data.max_valid_samples": 1000,
                             "train.patience": 0, "train.device": "cpu", "train.seed": 0}
                if mode != "c_two_ranks_gloo":
                    overrides["train.loader_workers"] = 0 if mode == "a_one_process" else 1
                spec = {"dataset": str(dataset), "out": str(args.work / f"run_{mode}_{L}"), "overrides": overrides}
                record = _run_child(spec, nproc=2 if mode == "c_two_ranks_gloo" else 1)
                runs.setdefault((mode, L), []).append(record)
                print(f"L={L:5d} {mode:17s} repeat {rep + 1}: {record['samples_per_second']:7.0f} samples/s, "
                      f"loss {record['loss']:.6f}", file=sys.stderr, flush=True)
    results = []
    for (mode, L), reps in runs.items():
        results.append({"mode": mode, "long_len": L, "batch_size": args.batch_size, "steps": args.steps,
                        "samples_per_second": _median([r["samples_per_second"] for r in reps]),
                        "samples_per_second_repeats": [round(r["samples_per_second"], 1) for r in reps],
                        "loss": reps[0]["loss"], "world_size": reps[0]["world_size"],
                        "loader_workers": reps[0]["loader_workers"],
                        "peak_rss_mb_rank0": max(r["peak_rss_mb"] or 0 for r in reps) or None})
    by = {(r["mode"], r["long_len"]): r for r in results}
    comparison = []
    for L in lengths:
        a, b, c = (by[(m, L)] for m in MODES)
        comparison.append({"long_len": L, "off_thread_speedup": b["samples_per_second"] / a["samples_per_second"],
                           "two_ranks_speedup": c["samples_per_second"] / a["samples_per_second"],
                           "loss_one_rank": a["loss"], "loss_two_ranks": c["loss"],
                           "loss_relative_difference": abs(c["loss"] - a["loss"]) / abs(a["loss"]),
                           "off_thread_loss_identical": a["loss"] == b["loss"]})
    vocab = []
    for num_items in [int(x) for x in args.vocab.split(",") if x.strip()]:
        vdata = _vocab_dataset(args.work, num_items, args.vocab_events)
        for sparse in (False, True) if num_items <= args.vocab_dense_limit else (True,):
            overrides = {"model.long_term": "twin", "data.long_len": 100, "model.esu_size": 50,
                         "train.batch_size": 256, "train.epochs": 1, "train.max_steps": args.vocab_steps,
                         "data.max_valid_samples": 1000, "train.patience": 0, "train.device": "cpu",
                         "optim.sparse_embeddings": sparse}
            if args.vocab_id_dim is not None:
                overrides["model.id_dim"] = args.vocab_id_dim
            record = _run_child({"dataset": str(vdata), "out": str(args.work / f"vocab_run_{num_items}_{sparse}"),
                                 "overrides": overrides})
            record.update({"num_items": num_items, "sparse_embeddings": sparse, "id_dim": args.vocab_id_dim,
                           "seconds_per_step": record["train_seconds"] / max(1, record["steps"])})
            vocab.append(record)
            print(f"vocab {num_items:,} sparse={sparse}: peak RSS {record['peak_rss_mb']:.0f} MB, "
                  f"{record['seconds_per_step']:.2f} s/step", file=sys.stderr, flush=True)
    largest = comparison[-1] if comparison else None
    payload = {
        "settings": {"dataset": str(dataset), "lengths": lengths, "steps": args.steps, "batch_size": args.batch_size,
                     "esu_size": args.esu_size, "repeats": args.repeats, "model": "twin"},
        "machine": {"cores": available_cores(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": _load_average()},
        "results": results,
        "comparison": comparison,
        "vocabulary": vocab,
        "targets": {
            "speedup_ge_2": None if largest is None else largest["two_ranks_speedup"] >= 2.0,
            "loss_agreement_le_1pct": (None if not comparison else
                                       all(c["loss_relative_difference"] <= 0.01 for c in comparison)),
            "compress_1e8_peak_le_8gb": None,
        },
    }
    from twinv2._io import write_json_atomic

    write_json_atomic(args.out, payload)
    rows = [[r["mode"], r["long_len"], r["world_size"], r["loader_workers"], f"{r['samples_per_second']:.0f}",
             ", ".join(f"{x:.0f}" for x in r["samples_per_second_repeats"]), f"{r['loss']:.6f}"]
            for r in sorted(results, key=lambda r: (r["long_len"], r["mode"]))]
    table = markdown_table(["run", "L", "ranks", "loader workers", "samples/s (median)", "repeats",
                            f"loss after {args.steps} steps"], rows)
    summary = markdown_table(["L", "off-thread / one process", "2 ranks / one process", "loss: 1 vs 2 ranks"],
                             [[c["long_len"], f"{c['off_thread_speedup']:.2f}x", f"{c['two_ranks_speedup']:.2f}x",
                               f"{c['loss_relative_difference']:.1e}"] for c in comparison])
    text = table + "\n\n" + summary + "\n" if results else ""
    if vocab:
        vocab_rows = [[f"{v['num_items']:,}", v["id_dim"] or "default", "sparse" if v["sparse_embeddings"] else "dense",
                       f"{v['peak_rss_mb']:.0f}", f"{v['seconds_per_step']:.2f}"] for v in vocab]
        text += ("\n" if text else "") + markdown_table(["items", "id_dim", "embedding gradients", "peak RSS (MB)",
                                                        "s/step"], vocab_rows) + "\n"
    text += f"\ntargets: {json.dumps(payload['targets'])}\n"
    write_text(args.out.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

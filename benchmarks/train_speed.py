"""Training throughput and peak memory of ``twin`` and ``twinv2`` at GSU length 10^3 and 10^4.

    python benchmarks/train_speed.py --out benchmarks/results/train_speed.json

Each (model, L) runs in a fresh child process so that its memory peak is its own. A step is what the
training loop does: build the batch from the CSR histories (``BatchBuilder``), forward, backward, one
Adam + one Adagrad step. Samples/s = batch size x timed steps / wall time of those steps (after warm-up
steps). Memory: the process's peak resident set during training (warm-up and timed steps), and that peak minus
the resident set just before the first step, with data, model and optimisers loaded (Linux
``/proc/self/clear_refs`` resets the peak before the first step); on CUDA the peak of
``torch.cuda.max_memory_allocated``. Each (model, L) runs ``--repeats`` times, alternating the models,
and the median is reported. Both
models see the same samples, batch size, L and k = 100; the
long sequence tensor is ``[B, L]`` for both (TWIN-V2's virtual items and TWIN's raw behaviors are padded
to L alike), so the comparison is per GSU position.

The dataset is the default synthetic one with its default compression (generated under ``--work`` once),
or ``--dataset`` / ``--compressed``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from twinv2._io import write_json_atomic
from twinv2.train.report import markdown_table, write_text


def _rss_kb(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` of this process in KiB (0 where /proc is unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Measure one (model, L) in this process and return the record."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from twinv2.compress import load_compressed
    from twinv2.data.batches import BatchBuilder, SequenceConfig
    from twinv2.data.split import TemporalSplit, make_samples
    from twinv2.data.store import load_dataset
    from twinv2.models import ModelConfig, build_model
    from twinv2.train._runtime import resolve_device, torch_threads
    from twinv2.train.loop import split_parameters

    device = resolve_device(args.device)
    ds = load_dataset(args.dataset)
    comp = load_compressed(args.compressed) if args.model == "twinv2" else None
    split = TemporalSplit.from_fractions(ds.histories.ts)
    B, steps, warmup = args.batch_size, args.steps, args.warmup
    samples = make_samples(ds, split, "train", max_samples=B * (steps + warmup), seed=0)
    with torch_threads(args.threads) as threads:
        torch.manual_seed(0)
        model = build_model(ModelConfig(long_term=args.model, esu_size=args.esu_size), ds.manifest, ds.items)
        model.to(device).train()
        builder = BatchBuilder(ds, SequenceConfig(long_len=args.long_len, long_source=model.long_source()), comp)
        emb, dense = split_parameters(model)
        opt_e, opt_d = torch.optim.Adagrad(emb, lr=0.05), torch.optim.Adam(dense, lr=1e-3)

        def step(i: int) -> None:
            batch = builder.build(samples, np.arange(i * B, (i + 1) * B)).to(device)
            loss = F.binary_cross_entropy_with_logits(model(batch), batch.label)
            opt_e.zero_grad(set_to_none=True)
            opt_d.zero_grad(set_to_none=True)
            loss.backward()
            opt_d.step()
            opt_e.step()

        # Memory baseline: data, model and optimisers in place, no step taken yet; the peak covers the
        # warm-up steps too (the allocator keeps what the first steps needed).
        before = _rss_kb("VmRSS")
        peak_reset = _reset_peak()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for i in range(warmup):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(warmup, warmup + steps):
            step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = _rss_kb("VmHWM")
    record = {
        "model": args.model, "long_len": args.long_len, "esu_size": args.esu_size, "batch_size": B,
        "steps": steps, "threads": threads, "device": str(device), "seconds": seconds,
        "samples_per_second": B * steps / seconds,
        "rss_before_training_mb": before / 1024,
        "peak_rss_mb": peak / 1024 if peak_reset else None,
        "train_peak_over_baseline_mb": (peak - before) / 1024 if peak_reset else None,
    }
    if device.type == "cuda":
        record["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return record


def _prepare(work: Path) -> tuple[Path, Path]:
    """The default synthetic dataset and its default compression under ``work`` (made once)."""
    from twinv2.compress import compress_dataset
    from twinv2.data.split import TemporalSplit
    from twinv2.data.store import load_dataset
    from twinv2.data.synth import synthesize
    from twinv2.demo import _synth_matches

    data, comp = work / "data", work / "compressed"
    if not _synth_matches(data, "default", 0):
        synthesize(data, scale="default", seed=0)
    ds = load_dataset(data)
    split = TemporalSplit.from_fractions(ds.histories.ts)
    compress_dataset(data, comp, split.snapshot_ts, workers=2, seed=0)
    return data, comp


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="results JSON (a .md table goes beside it)")
    p.add_argument("--dataset", type=Path, default=None)
    p.add_argument("--compressed", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path("benchmarks/results/train_speed_work"))
    p.add_argument("--models", default="twin,twinv2")
    p.add_argument("--lengths", default="1000,10000")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--esu-size", type=int, default=100)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="child runs per (model, L); the median is reported")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = every core but one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "L"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.model, args.long_len = args.child[0], int(args.child[1])
        print(json.dumps(child(args)))
        return 0
    if args.out is None:
        p.error("--out is required")
    if args.dataset is None or args.compressed is None:
        args.dataset, args.compressed = _prepare(args.work)
    records = []
    for L in [int(x) for x in args.lengths.split(",")]:
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in args.models.split(",")}
        for _ in range(args.repeats):  # alternate the models so that machine noise hits both alike
            for model in runs:
                cmd = [sys.executable, __file__, "--child", model, str(L), "--dataset", str(args.dataset),
                       "--compressed", str(args.compressed), "--batch-size", str(args.batch_size), "--esu-size",
                       str(args.esu_size), "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads",
                       str(args.threads), "--device", args.device]
                res = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
                if res.returncode != 0:
                    print(res.stderr, file=sys.stderr)
                    return res.returncode
                runs[model].append(json.loads(res.stdout.strip().splitlines()[-1]))
        for model, reps in runs.items():
            speeds = sorted(r["samples_per_second"] for r in reps)
            rec = dict(max(reps, key=lambda r: r["peak_rss_mb"] or 0))
            rec["samples_per_second"] = speeds[len(speeds) // 2]  # median of the repeats
            rec["samples_per_second_repeats"] = [r["samples_per_second"] for r in reps]
            records.append(rec)
            print(f"{model:7s} L={L:6d}: {rec['samples_per_second']:8.1f} samples/s (median of {len(reps)}), "
                  f"peak +{rec['train_peak_over_baseline_mb'] or float('nan'):.0f} MB over "
                  f"{rec['rss_before_training_mb']:.0f} MB", file=sys.stderr)
        if len(runs) == 2 and {"twin", "twinv2"} <= set(runs):
            a, b = (next(r for r in records if r["model"] == m and r["long_len"] == L) for m in ("twinv2", "twin"))
            print(f"  twinv2 / twin throughput at L={L}: {a['samples_per_second'] / b['samples_per_second']:.3f}",
                  file=sys.stderr)
    payload = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                            if k not in ("child", "out")}, "results": records}
    write_json_atomic(args.out, payload)
    rows = [[r["model"], r["long_len"], r["batch_size"], f"{r['samples_per_second']:.1f}",
             ", ".join(f"{x:.0f}" for x in r["samples_per_second_repeats"]),
             f"{r['train_peak_over_baseline_mb']:.0f}" if r["train_peak_over_baseline_mb"] is not None else "n/a",
             f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] is not None else "n/a", r["threads"], r["device"]]
            for r in records]
    table = markdown_table(["model", "GSU length L", "batch", "samples/s (median)", "repeats", "train peak over "
                            "baseline (MB)", "peak RSS (MB)", "threads", "device"], rows)
    write_text(args.out.with_suffix(".md"), table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

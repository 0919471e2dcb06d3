"""Serving latency: the projection-cache scorer against its bound and a naive scorer, then HTTP under load.

    python benchmarks/serve_latency.py --out benchmarks/results/serve_latency.json

**Scorer** (one torch thread; TWIN-V2 at the paper's widths, pinned here: 64-d ids, 8-d side features,
4 heads of d_k = 16, k = 100, short sequence 50, MLP 200-80; 100,000 items), for B candidates in
{100, 1000} and GSU length L in {10^3, 10^4}. One user's long sequence of L virtual items (sizes 1-20)
and short sequence of 50 behaviors are built once; each timed call is :meth:`twinv2.serve.Scorer.score`
(GSU over the cached projections, top-k merge, ESU, short-term module, MLP), ``p50_ms`` / ``p99_ms`` over
``--reps`` calls (at least 10, at most ``--budget-s`` seconds per case).

- ``bound_ms``: the per-head ``(B x d_k) @ (d_k x L)`` products alone (one ``torch.bmm`` over the H heads on
  contiguous operands), timed in the same run: the floor of any exact GSU (DESIGN §7).
- ``naive_ms``: the same request through the training model's forward (:meth:`Scorer.score_forward`: the
  request as a batch of B samples, candidates in chunks of 32), which re-gathers the L behaviors' inherent
  features and re-projects them through ``W_h`` for every candidate: what serving costs without the cache.
  Median of ``--naive-reps`` calls.

**HTTP** end to end on loopback: a synthetic ``small`` dataset (300 users, 2,000 items) compressed at its
80% snapshot, a randomly initialised TWIN-V2 checkpoint of the package's default model config (latency
does not depend on training) with L = 1000, served by ``twinv2 serve`` (one worker, one torch thread,
SQLite store); 8 client threads send ``POST /v1/score`` with 100 random candidates for random users for
``--http-seconds``. ``p50_ms`` / ``p99_ms`` of the client-side latency, ``rps`` = responses / wall time,
``errors`` = non-200 answers or failed connections.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from twinv2._io import write_json_atomic

B_VALUES = (100, 1000)
L_VALUES = (1_000, 10_000)
NUM_ITEMS = 100_000


def _percentiles(times: list[float]) -> tuple[float, float]:
    a = np.asarray(times) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _timed(fn: Any, reps: int, budget_s: float) -> list[float]:
    fn()  # warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < 10 or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def _model_and_inputs(seed: int, relevance: str = "match"):
    """A TWIN-V2 model at the default architecture over NUM_ITEMS synthetic items (``relevance``: the
    learned score's form; "match" adds the exact-match term on category and author)."""
    from twinv2.data.schema import ColumnSpec, Manifest
    from twinv2.models import ModelConfig, build_model

    rng = np.random.default_rng(seed)
    item_cols = [ColumnSpec("item_id", "id", "int64"),
                 ColumnSpec("category_id", "inherent_categorical", "int64", vocab_size=200),
                 ColumnSpec("author_id", "inherent_categorical", "int64", vocab_size=5000),
                 ColumnSpec("duration", "inherent_numeric", "float32")]
    event_cols = [ColumnSpec("user_id", "id", "int64"), ColumnSpec("item_id", "id", "int64"),
                  ColumnSpec("ts", "timestamp", "int64"), ColumnSpec("label", "label", "int8"),
                  ColumnSpec("play_time", "cross_numeric", "float32"),
                  ColumnSpec("completion_ratio", "cross_numeric", "float32")]
    manifest = Manifest(name="bench", source="benchmark", num_users=1, num_items=NUM_ITEMS, num_events=1,
                        time_min=0, time_max=1, item_columns=item_cols, event_columns=event_cols)
    items = {"category_id": rng.integers(0, 200, NUM_ITEMS + 1), "author_id": rng.integers(0, 5000, NUM_ITEMS + 1),
             "duration": rng.uniform(5, 600, NUM_ITEMS + 1).astype(np.float32)}
    torch.manual_seed(seed)
    # The paper's widths, pinned (not the package defaults, which may change): 64-d ids, 4 heads of 16.
    config = ModelConfig(long_term="twinv2", id_dim=64, feature_dim=8, num_heads=4, head_dim=16, esu_size=100,
                         short_len=50, mlp_dims=(200, 80), relevance=relevance)
    model = build_model(config, manifest, items).eval()
    return model, rng


def _sequence(rng: np.random.Generator, length: int, clusters: bool):
    from twinv2.data.batches import SequenceBatch

    item = torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, (1, length)))
    play = rng.uniform(0, 300, length)
    ratio = rng.uniform(0, 1, length)
    label = rng.uniform(0, 1, length) if clusters else rng.integers(0, 2, length)
    gap = np.sort(rng.uniform(1, 3e7, length))
    cross = torch.from_numpy(np.stack([play, ratio, label, gap], axis=1)[None].astype(np.float32))
    size = torch.from_numpy(rng.integers(1, 21, (1, length)).astype(np.float32)) if clusters else \
        torch.ones(1, length)
    return SequenceBatch(item, cross, size, torch.ones(1, length, dtype=torch.bool))


def scorer_cases(args: argparse.Namespace) -> list[dict[str, Any]]:
    from twinv2.serve import Scorer

    torch.set_num_threads(1)
    model, rng = _model_and_inputs(args.seed, args.relevance)
    scorer = Scorer(model)
    twin = model.long_term.twin
    H, d_k = twin.score.num_heads, twin.score.head_dim
    cases = []
    for L in L_VALUES:
        long = _sequence(rng, L, clusters=True)
        short = _sequence(rng, model.config.short_len, clusters=False)
        for B in B_VALUES:
            cands = torch.from_numpy(rng.integers(1, NUM_ITEMS + 1, B))
            with torch.no_grad():
                q = torch.randn(H, B, d_k)
                k = torch.randn(H, d_k, L)
                bound = _timed(lambda q=q, k=k: torch.bmm(q, k), args.reps, args.budget_s)
                times = _timed(lambda long=long, short=short, cands=cands: scorer.score(long, short, cands),
                               args.reps, args.budget_s)
                naive = _timed(lambda long=long, short=short, cands=cands: scorer.score_forward(
                    long, short, cands, chunk=32), args.naive_reps, 0.0)
            p50, p99 = _percentiles(times)
            case = {"B": B, "L": L, "p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
                    "bound_ms": round(_percentiles(bound)[0], 3), "naive_ms": round(_percentiles(naive)[0], 3)}
            print(f"B={B:5d} L={L:6d}: p50 {p50:9.2f} ms  p99 {p99:9.2f} ms  bound {case['bound_ms']:9.2f} ms  "
                  f"naive {case['naive_ms']:10.2f} ms  ({len(times)} calls)", flush=True)
            cases.append(case)
    return cases


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare_http(work: Path, seed: int) -> tuple[Path, Path, int, int]:
    """Dataset, compressed folder and a random checkpoint under ``work`` (reused when present)."""
    from twinv2.compress import compress_dataset
    from twinv2.data.batches import SequenceConfig
    from twinv2.data.split import TemporalSplit
    from twinv2.data.store import load_dataset
    from twinv2.data.synth import synthesize
    from twinv2.models import ModelConfig, build_model
    from twinv2.train.checkpoint import save_checkpoint
    from twinv2.train.config import TrainConfig

    data, comp, ckpt = work / "data", work / "compressed", work / "twinv2.pt"
    if not (data / "manifest.json").exists():
        synthesize(data, scale="small", seed=seed, progress=False)
    ds = load_dataset(data)
    split = TemporalSplit.from_fractions(ds.histories.ts)
    if not (comp / "manifest.json").exists():
        compress_dataset(data, comp, split.snapshot_ts, workers=1, seed=seed, progress=False)
    if not ckpt.exists():
        cfg = dataclasses.replace(TrainConfig(), model=ModelConfig(long_term="twinv2"))
        torch.manual_seed(seed)
        model = build_model(cfg.model, ds.manifest, ds.items).eval()
        seq = SequenceConfig(long_len=1000, short_len=cfg.model.short_len, long_source="compressed")
        save_checkpoint(ckpt, model, config=cfg, sequence_config=seq, split=split, dataset=ds, compressed_path=comp,
                        train_state={})
    return ckpt, comp, ds.manifest.num_users, ds.manifest.num_items


def http_load(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ckpt, comp, num_users, num_items = _prepare_http(work, args.seed)
    db = work / "serve.db"
    for p in work.glob("serve.db*"):
        p.unlink()
    port = _free_port()
    log = (work / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "twinv2.cli", "serve", "--checkpoint", str(ckpt), "--compressed",
                             str(comp), "--store", f"sqlite://{db}", "--port", str(port), "--workers", "1",
                             "--threads", "1"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {work / 'server.log'}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 300 s")
            time.sleep(0.2)
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop_at = [0.0]

        def client(worker: int) -> None:
            rng = np.random.default_rng([args.seed, worker])
            with httpx.Client(base_url=base, timeout=60) as c:
                warm = 3
                while True:
                    body = {"user_id": int(rng.integers(0, num_users)),
                            "candidates": rng.integers(1, num_items + 1, 100).tolist()}
                    t = time.perf_counter()
                    if warm == 0 and t >= stop_at[0]:
                        return
                    try:
                        ok = c.post("/v1/score", json=body).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    dt = time.perf_counter() - t
                    if warm:
                        warm -= 1
                        continue
                    with lock:
                        latencies.append(dt)
                        errors[0] += 0 if ok else 1

        stop_at[0] = time.perf_counter() + 1e9
        threads = [threading.Thread(target=client, args=(w,)) for w in range(args.concurrency)]
        start = time.perf_counter()
        stop_at[0] = start + args.http_seconds
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        p50, p99 = _percentiles(latencies)
        out = {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3), "rps": round(len(latencies) / wall, 2),
               "errors": int(errors[0])}
        print(f"HTTP, concurrency {args.concurrency}, {len(latencies)} requests in {wall:.1f} s: p50 {p50:.1f} ms  "
              f"p99 {p99:.1f} ms  {out['rps']} req/s  errors {out['errors']}", flush=True)
        return out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write (keys: cases, http).")
    parser.add_argument("--reps", type=int, default=50, help="Timed scorer calls per case (at least 10).")
    parser.add_argument("--budget-s", type=float, default=20.0, help="Seconds per case after the first 10 calls.")
    parser.add_argument("--naive-reps", type=int, default=3, help="Timed naive calls per case.")
    parser.add_argument("--http-seconds", type=float, default=20.0, help="Duration of the HTTP load.")
    parser.add_argument("--concurrency", type=int, default=8, help="HTTP client threads.")
    parser.add_argument("--work", default="runs/bench_serve", help="Folder for the HTTP dataset and checkpoint.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--relevance", choices=("paper", "match"), default="match",
                        help="The learned score's form (the package default: match).")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = {"relevance": args.relevance, "cases": scorer_cases(args), "http": http_load(args)}
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

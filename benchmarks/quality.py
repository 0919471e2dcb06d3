"""Quality benchmark: every model and the TWIN-V2 ablations, several seeds, one protocol (DESIGN §3).

    python benchmarks/quality.py --out benchmarks/results/quality.json [--seeds 3] [--dataset DIR]

Protocol:

- data: the default synthetic life cycles (``twinv2 data synth --scale default --seed 0``, generated into
  ``--work`` once and reused), or an imported dataset with ``--dataset`` (e.g. MovieLens:
  ``twinv2 data import movielens ../shared/data/ml-latest-small --out data/ml``);
- split: event-count fractions 80 / 90 / 95% (snapshot, valid start, test start), the library default;
- equal budgets for every model: GSU length L (``--long-len``), ESU size k (``--esu-size``), the same
  seeded subsample of at most ``--max-train-samples`` train events, ``--epochs`` epochs, batch size; the
  checkpoint with the best validation GAUC is evaluated on one seeded subsample of the test window
  (``--max-test-samples``, 50,000 of ~117,000 events by default; the same events for every run; 0 = all);
- seeds: seed s sets model initialisation, the train subsample and the shuffling. The compressed life
  cycles are built once per clustering setting with compression seed 0 (so seed variance of ``twinv2``
  does not include clustering variance; this is stated in the output): at the split snapshot for training
  and validation, and again at the test start for the test window (the offline job on a regular cadence,
  as in ``twinv2 demo``; every clustered behavior precedes every sample it serves);
- ablations (all ``twinv2`` under the same budget): ``twinv2_no_log_size`` (attention without ln n),
  ``twinv2_random_groups`` (random grouping with the same size rule instead of k-means),
  ``twinv2_gamma5`` / ``twinv2_gamma80`` (gamma sweep; gamma = 20 is ``twinv2`` itself),
  ``twinv2_flat_k10`` (one-level k-means with a fixed k = 10 clusters per completion group), and
  ``twinv2_emb_twin`` (clusters from the item embeddings of the seed-0 ``twin`` run instead of the
  training-free co-occurrence embeddings; those embeddings are learned on the train window).

Outputs: ``--out`` JSON (key ``results``: name -> ``auc_mean``, ``auc_std``, ``gauc_mean``, ``gauc_std``,
``logloss_mean`` and more), a Markdown table beside it (``.md``) and two PNG plots (GAUC by model; GAUC by
activity tertile). Each finished run is stored under ``--work/runs`` so an interrupted benchmark resumes
where it stopped (delete the folder to start over).

Budget: the defaults (L = 500, k = 100, 120,000 of the ~235,000 train events, one epoch, 50,000 test
samples, two runs at a time with one torch thread each) keep a full run (8 models + 6 ablations, 3 seeds
= 42 training runs) near 40 minutes on 2 CPU cores; ``sdim`` is the slowest model (~600 samples/s). The
models are not converged at this budget (twin's validation GAUC rises from 0.650 with 60,000 samples to
0.685 with all of them); the numbers compare models under one fixed compute budget. ``--quick`` is a
small smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from twinv2._io import write_json_atomic
from twinv2.compress import ClusterConfig, EmbeddingSource, compress_dataset
from twinv2.data.split import TemporalSplit
from twinv2.data.store import Dataset, load_dataset
from twinv2.models import LONG_TERM_NAMES
from twinv2.train.config import TrainConfig, apply_overrides, config_to_dict
from twinv2.train.evaluate import ACTIVITY_GROUPS, evaluate_checkpoint
from twinv2.train.loop import train_model
from twinv2.train.report import bar_plot, fmt_mean_std, grouped_bar_plot, markdown_table, mean_std, write_text

console = Console(stderr=True)


@dataclass(frozen=True)
class Variant:
    """One row of the results: a model, the clustering it reads (twinv2 only) and model overrides."""

    name: str
    model: str
    description: str
    cluster: ClusterConfig | None = None  # None = the default ClusterConfig (for models that read clusters)
    embeddings: str = "cooccurrence"  # or "twin": item table of the seed-0 twin run
    model_overrides: dict[str, Any] = field(default_factory=dict)

    def compress_key(self) -> str:
        cfg = self.cluster or ClusterConfig()
        text = json.dumps([dataclasses.asdict(cfg), self.embeddings], sort_keys=True)
        return f"{self.embeddings}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


MODEL_VARIANTS = [Variant(m, m, f"{m} (default settings)") for m in LONG_TERM_NAMES]
ABLATIONS = [
    Variant("twinv2_no_log_size", "twinv2", "twinv2 without the ln n term in GSU and ESU",
            model_overrides={"use_log_size": False}),
    Variant("twinv2_random_groups", "twinv2", "random grouping (same size rule) instead of k-means",
            cluster=ClusterConfig(method="random")),
    Variant("twinv2_gamma5", "twinv2", "hierarchical k-means, gamma = 5", cluster=ClusterConfig(gamma=5)),
    Variant("twinv2_gamma80", "twinv2", "hierarchical k-means, gamma = 80", cluster=ClusterConfig(gamma=80)),
    Variant("twinv2_flat_k10", "twinv2", "flat k-means, fixed k = 10 clusters per completion group",
            cluster=ClusterConfig(method="flat", flat_k=10)),
    Variant("twinv2_emb_twin", "twinv2", "clusters of the seed-0 twin run's item embeddings",
            embeddings="twin"),
]
ABLATION_NAMES = [a.name for a in ABLATIONS]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="results JSON (a .md table and PNGs go beside it)")
    p.add_argument("--dataset", type=Path, default=None, help="an imported dataset folder (default: synthetic)")
    p.add_argument("--work", type=Path, default=None, help="data, compressed folders and finished runs "
                   "(default: benchmarks/results/quality_work or <out stem>_work)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--models", default=",".join(LONG_TERM_NAMES), help="comma-separated models")
    p.add_argument("--ablations", default=",".join(ABLATION_NAMES), help="comma-separated ablations, or 'none'")
    p.add_argument("--long-len", type=int, default=500, help="GSU input length L (all models)")
    p.add_argument("--esu-size", type=int, default=100, help="ESU size k (all two-stage models)")
    p.add_argument("--max-train-samples", type=int, default=120_000)
    p.add_argument("--max-valid-samples", type=int, default=10_000)
    p.add_argument("--max-test-samples", type=int, default=50_000, help="seeded test subsample (0 = all)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--scale", default="default", help="synthetic scale when --dataset is not given")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2, help="compression worker processes")
    p.add_argument("--jobs", type=int, default=None, help="training runs at a time, one process each "
                   "(default: the number of cores); each run gets (cores - 1) // jobs torch threads, at least 1")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every run's best.pt")
    p.add_argument("--quick", action="store_true", help="smoke run: small scale, tiny budgets, 2 seeds")
    args = p.parse_args(argv)
    if args.quick:
        args.scale, args.seeds, args.long_len, args.esu_size = "small", min(args.seeds, 2), 100, 20
        args.max_train_samples, args.max_valid_samples, args.max_test_samples = 3_000, 1_000, 3_000
        args.workers = 1
    if args.max_test_samples == 0:
        args.max_test_samples = None
    from twinv2.train._runtime import available_cores, default_num_threads

    args.jobs = args.jobs or available_cores()
    args.threads = max(1, default_num_threads() // args.jobs)
    return args


def _dataset(args: argparse.Namespace, work: Path) -> Dataset:
    if args.dataset is not None:
        return load_dataset(args.dataset)
    from twinv2.data.synth import synthesize
    from twinv2.demo import _synth_matches

    data = work / "data"
    if not _synth_matches(data, args.scale, 0):
        synthesize(data, scale=args.scale, seed=0, progress=True)
    return load_dataset(data)


def _config(args: argparse.Namespace, variant: Variant, seed: int) -> TrainConfig:
    values = {"model.long_term": variant.model, "model.esu_size": args.esu_size, "data.long_len": args.long_len,
              "data.max_train_samples": args.max_train_samples, "data.max_valid_samples": args.max_valid_samples,
              "data.max_test_samples": args.max_test_samples, "train.epochs": args.epochs,
              "train.batch_size": args.batch_size, "train.seed": seed, "train.device": args.device,
              "train.patience": 1, "train.num_threads": args.threads}
    if args.quick:
        values.update({"model.id_dim": 16, "model.num_heads": 2, "model.head_dim": 8, "model.mlp_dims": [32]})
    values.update({f"model.{k}": v for k, v in variant.model_overrides.items()})
    return apply_overrides(TrainConfig(), values, source="quality benchmark")


def _compressed(ds: Dataset, work: Path, variant: Variant, snapshot_ts: int, label: str, args: argparse.Namespace,
                twin_checkpoint: Path | None) -> Path:
    """The variant's compressed life cycles at ``snapshot_ts`` (``label``: "train" or "test")."""
    folder = work / "compressed" / f"{variant.compress_key()}-{label}"
    if variant.embeddings == "twin":
        if twin_checkpoint is None or not twin_checkpoint.exists():
            raise SystemExit(f"{variant.name} needs the seed-0 twin checkpoint; include 'twin' in --models")
        source = EmbeddingSource("checkpoint", path=str(twin_checkpoint))
    else:
        source = EmbeddingSource()
    console.print(f"compressing for {variant.name} ({label} snapshot): {variant.cluster or ClusterConfig()}",
                  highlight=False)
    compress_dataset(ds.path, folder, snapshot_ts, embeddings=source, config=variant.cluster, seed=0,
                     workers=args.workers, progress=True)
    return folder


def _settings(args: argparse.Namespace, ds: Dataset) -> dict[str, Any]:
    return {"dataset": str(ds.path.resolve()), "num_events": ds.manifest.num_events, "long_len": args.long_len,
            "esu_size": args.esu_size, "max_train_samples": args.max_train_samples,
            "max_valid_samples": args.max_valid_samples, "max_test_samples": args.max_test_samples,
            "epochs": args.epochs, "batch_size": args.batch_size, "quick": args.quick}


def _run_one(ds: Dataset, work: Path, variant: Variant, seed: int, args: argparse.Namespace,
             compressed: tuple[Path, Path] | None, settings: dict[str, Any]) -> dict[str, Any]:
    """Train + test one (variant, seed); cached in ``work/runs/<name>/seed<k>/result.json``."""
    run_dir = work / "runs" / variant.name / f"seed{seed}"
    cache = run_dir / "result.json"
    cfg = _config(args, variant, seed)
    # The cache is valid only for the same data, budget and training config (threads aside).
    identity = {**config_to_dict(cfg), "train": {**config_to_dict(cfg)["train"], "num_threads": None},
                "clusters": None if compressed is None else [str(p) for p in compressed]}
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("settings") == settings and cached.get("config") == identity:
            console.print(f"[dim]cached: {variant.name} seed {seed}[/]")
            return cached
    quiet = Console(file=io.StringIO())
    t0 = time.perf_counter()
    if args.jobs <= 1:
        console.print(f"[bold]{variant.name}[/] seed {seed}", highlight=False)
    result = train_model(ds, run_dir / "model", cfg, compressed=compressed[0] if compressed else None,
                         overwrite=True, console=quiet, show_progress=args.jobs <= 1)
    report = evaluate_checkpoint(result.best_checkpoint, "test", dataset=ds,
                                 compressed=compressed[1] if compressed else None, device=args.device,
                                 num_threads=args.threads, show_progress=False)
    record = {
        "name": variant.name, "model": variant.model, "seed": seed, "settings": settings, "config": identity,
        "auc": report["auc"], "gauc": report["gauc"], "logloss": report["logloss"],
        "gauc_users": report["gauc_users"], "gauc_impressions": report["gauc_impressions"],
        "num_test_samples": report["num_samples"],
        "groups": {g: {k: report["groups"][g][k] for k in ("auc", "gauc", "logloss", "num_samples", "num_users",
                                                            "history_length_min", "history_length_max")}
                   for g in ACTIVITY_GROUPS},
        "valid_gauc": result.best.get("gauc"), "train_samples": result.num_train_samples,
        "samples_per_second": result.samples_per_second, "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - t0,
    }
    console.print(f"{variant.name} seed {seed}: test GAUC {record['gauc']:.4f}  AUC {record['auc']:.4f}  "
                  f"logloss {record['logloss']:.4f}  ({record['samples_per_second']:.0f} samples/s, "
                  f"{record['wall_seconds']:.0f} s)", highlight=False)
    keep = args.keep_checkpoints or (variant.name == "twin" and seed == 0)
    (run_dir / "model" / "last.pt").unlink(missing_ok=True)
    if not keep:
        (run_dir / "model" / "best.pt").unlink(missing_ok=True)
    write_json_atomic(cache, record)
    return record


def aggregate(records: list[dict[str, Any]], variants: list[Variant]) -> dict[str, dict[str, Any]]:
    """Mean and sample std over seeds per variant (the JSON ``results`` block)."""
    results: dict[str, dict[str, Any]] = {}
    for v in variants:
        rs = [r for r in records if r["name"] == v.name]
        if not rs:
            continue
        auc_m, auc_s = mean_std([r["auc"] for r in rs])
        gauc_m, gauc_s = mean_std([r["gauc"] for r in rs])
        ll_m, ll_s = mean_std([r["logloss"] for r in rs])
        results[v.name] = {
            "model": v.model, "description": v.description, "seeds": [r["seed"] for r in rs],
            "auc_mean": auc_m, "auc_std": auc_s, "gauc_mean": gauc_m, "gauc_std": gauc_s,
            "logloss_mean": ll_m, "logloss_std": ll_s,
            "groups": {g: dict(zip(("gauc_mean", "gauc_std"), mean_std([r["groups"][g]["gauc"] for r in rs]),
                                   strict=True)) for g in ACTIVITY_GROUPS},
            "samples_per_second_mean": mean_std([r["samples_per_second"] for r in rs])[0],
            "per_seed": [{k: r[k] for k in ("seed", "auc", "gauc", "logloss")} for r in rs],
        }
    return results


def _comparison(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    models = [n for n in results if n in LONG_TERM_NAMES]
    if models:
        out["best_gauc_model"] = max(models, key=lambda n: results[n]["gauc_mean"])
    if "twinv2" in results and "twin" in results:
        a, b = results["twinv2"], results["twin"]
        diff = a["gauc_mean"] - b["gauc_mean"]
        twice_std = 2 * max(a["gauc_std"], b["gauc_std"])
        out.update({"twinv2_minus_twin_gauc": diff, "twice_seed_std": twice_std,
                    "twinv2_ahead_by_more_than_twice_std": bool(diff > twice_std),
                    "twinv2_best_gauc": out.get("best_gauc_model") == "twinv2"})
    return out


def write_outputs(out: Path, results: dict[str, Any], payload: dict[str, Any]) -> str:
    """Markdown table + plots beside ``out``; returns the table."""
    names = list(results)
    rows = [[n, fmt_mean_std([s["auc"] for s in results[n]["per_seed"]]),
             fmt_mean_std([s["gauc"] for s in results[n]["per_seed"]]),
             fmt_mean_std([s["logloss"] for s in results[n]["per_seed"]])]
            + [f"{results[n]['groups'][g]['gauc_mean']:.4f} ± {results[n]['groups'][g]['gauc_std']:.4f}"
               for g in ACTIVITY_GROUPS]
            + [f"{results[n]['samples_per_second_mean']:.0f}", len(results[n]["seeds"])] for n in names]
    table = markdown_table(["model / ablation", "AUC", "GAUC", "log loss", "GAUC low", "GAUC mid", "GAUC high",
                            "train samples/s", "seeds"], rows)
    s = payload["settings"]
    header = (f"# Quality benchmark\n\nDataset `{s['dataset']}`; L = {s['long_len']}, k = {s['esu_size']}, at most "
              f"{s['max_train_samples']} train samples, {s['epochs']} epoch(s), batch {s['batch_size']}; test = "
              f"{'the whole test window' if s['max_test_samples'] is None else s['max_test_samples']}. Mean ± "
              "sample std over seeds; GAUC by activity = history-length tertiles of test users (mean over seeds).\n\n")
    comp = payload.get("comparison", {})
    note = ""
    if "twinv2_minus_twin_gauc" in comp:
        note = (f"\n\ntwinv2 - twin GAUC = {comp['twinv2_minus_twin_gauc']:+.4f} (twice the larger seed std: "
                f"{comp['twice_seed_std']:.4f}); best GAUC: {comp.get('best_gauc_model')}.\n")
    write_text(out.with_suffix(".md"), header + table + note)
    stem = out.with_suffix("")
    bar_plot(f"{stem}_gauc_by_model.png", names, [results[n]["gauc_mean"] for n in names],
             [results[n]["gauc_std"] for n in names], ylabel="test GAUC (mean ± std over seeds)",
             title="GAUC by model and ablation", highlight="twinv2")
    models = [n for n in names if n in LONG_TERM_NAMES] or names
    grouped_bar_plot(f"{stem}_gauc_by_group.png", models, [f"{g} activity" for g in ACTIVITY_GROUPS],
                     [[results[n]["groups"][g]["gauc_mean"] for g in ACTIVITY_GROUPS] for n in models],
                     [[results[n]["groups"][g]["gauc_std"] for g in ACTIVITY_GROUPS] for n in models],
                     ylabel="test GAUC", title="GAUC by user-activity tertile (mean ± std over seeds)")
    return table


_WORKER_DATASETS: dict[str, Dataset] = {}


def _worker(path: str, variant: Variant, seed: int, args: argparse.Namespace,
            compressed: tuple[Path, Path] | None, settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """One run in a worker process (the dataset is loaded once per process)."""
    if path not in _WORKER_DATASETS:
        _WORKER_DATASETS[path] = load_dataset(path)
    return _run_one(_WORKER_DATASETS[path], work, variant, seed, args, compressed, settings)


def main(argv: list[str] | None = None) -> int:
    import concurrent.futures as cf
    import multiprocessing as mp

    args = parse_args(argv)
    t_start = time.perf_counter()
    work = args.work or args.out.with_name(f"{args.out.stem}_work")
    work.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ablations = [] if args.ablations == "none" else [a.strip() for a in args.ablations.split(",") if a.strip()]
    unknown = [m for m in models if m not in LONG_TERM_NAMES] + [a for a in ablations if a not in ABLATION_NAMES]
    if unknown:
        raise SystemExit(f"unknown model or ablation: {unknown}")
    variants = [v for v in MODEL_VARIANTS if v.name in models] + [a for a in ABLATIONS if a.name in ablations]
    ds = _dataset(args, work)
    split = TemporalSplit.from_fractions(ds.histories.ts)
    settings = _settings(args, ds)
    twin_ckpt = work / "runs" / "twin" / "seed0" / "model" / "best.pt"
    compressed: dict[str, tuple[Path, Path]] = {}
    records: list[dict[str, Any]] = []

    def clusters(v: Variant) -> tuple[Path, Path] | None:
        if v.model != "twinv2":
            return None
        key = v.compress_key()
        if key not in compressed:
            compressed[key] = (_compressed(ds, work, v, split.snapshot_ts, "train", args, twin_ckpt),
                               _compressed(ds, work, v, split.test_start_ts, "test", args, twin_ckpt))
        return compressed[key]

    def record(rec: dict[str, Any]) -> None:
        records.append(rec)
        results = aggregate(records, variants)
        write_json_atomic(args.out, {"settings": settings, "split": split.to_dict(), "results": results,
                                     "comparison": _comparison(results), "runs": records, "compression_seed": 0,
                                     "seconds": time.perf_counter() - t_start, "complete": False})

    # Phase 1: every run whose clusters do not depend on another run; phase 2: clusters of the seed-0
    # twin run's embeddings. Runs are independent (one torch thread each), so they run --jobs at a time.
    phases = [[(v, s) for s in range(args.seeds) for v in variants if v.embeddings != "twin"],
              [(v, s) for s in range(args.seeds) for v in variants if v.embeddings == "twin"]]
    for phase in phases:
        if not phase:
            continue
        comps = {v.name: clusters(v) for v, _ in phase}
        if args.jobs <= 1:
            for v, seed in phase:
                record(_run_one(ds, work, v, seed, args, comps[v.name], settings))
            continue
        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_worker, str(ds.path), v, seed, args, comps[v.name], settings, work)
                       for v, seed in phase]
            for fut in cf.as_completed(futures):
                record(fut.result())
    order = {(v.name, s): i for i, (v, s) in enumerate(p for ph in phases for p in ph)}
    records.sort(key=lambda r: order[(r["name"], r["seed"])])
    results = aggregate(records, variants)
    payload = {"settings": settings, "split": split.to_dict(), "results": results,
               "comparison": _comparison(results), "runs": records, "compression_seed": 0,
               "seconds": time.perf_counter() - t_start, "complete": True}
    write_json_atomic(args.out, payload)
    table = write_outputs(args.out, payload["results"], payload)
    print(table)
    print(f"\n{args.out} ({payload['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

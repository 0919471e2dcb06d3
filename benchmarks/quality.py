"""Quality benchmark: every model, the TWIN-V2 ablations, reference rows and an L sweep, several seeds, one
protocol (DESIGN §3), with the GSU diagnostics, ground-truth retrieval quality, the oracle ceiling, the
data's life-cycle headroom per test sample, and paired comparisons.

    python benchmarks/quality.py --regime {default,lifecycle} --out F.json [--seeds 3] [--sweep all]
    python benchmarks/quality.py --dataset DIR --out F.json        # an imported dataset

Protocol:

- data: a synthetic regime (``twinv2 data synth --scale default|lifecycle --seed 0``, generated into
  ``--work`` once and reused), or an imported dataset with ``--dataset`` (e.g. MovieLens:
  ``twinv2 data import movielens ../shared/data/ml-latest-small --out data/ml``);
- split: event-count fractions 80 / 90 / 95% (snapshot, valid start, test start), the library default;
- equal budgets for every model: GSU length L (``--long-len``), ESU size k (``--esu-size``), the same
  train events (``--max-train-samples``: a seeded subsample, default 0 = every event of the train window),
  at most ``--epochs`` epochs with early stopping on validation GAUC (``--eval-points`` validations per
  epoch, stop after ``--patience`` validations without improvement), batch size; the checkpoint with the
  best validation GAUC is evaluated on the test window (``--max-test-samples``: default 0 = the whole
  window; else one seeded subsample, the same rows for every run). Epochs run and train seconds are
  reported per model;
- TWIN-V2's sequence: at most ``--raw-cap`` (100) raw behaviors since the snapshot, then virtual items from
  clusters split by the dataset's category (``--split-by auto``) with a per-user budget of L - raw cap
  (``--max-clusters auto``), so the compressed life cycle fits the GSU: chosen on validation GAUC
  (docs/models.md); ``--raw-cap -1 --split-by none --max-clusters none`` is the paper's composition;
- seeds: seed s sets model initialisation, the train subsample and the shuffling; the same seed gives
  every model the same data order and test rows, so differences are judged **paired**. The compressed life
  cycles are built once per clustering setting with compression seed 0 (seed variance of ``twinv2`` does
  not include clustering variance), as the offline job on a cadence: ``--cadence`` versions from the split
  snapshot on (default 8, one every 2.5% of the events); every sample, train, valid or test, reads the
  latest version built before it (``twinv2.compress.cadence``), so training sees the mix serving sees;
- models: every long-term model with its defaults; ``dare`` runs with ``relevance: paper`` (DARE's own
  form: decoupled attention embeddings, no match term);
- ablations (same budget): ``twinv2_paper`` / ``twin_paper`` (the paper's relevance score, without the
  exact-match term: what the extension adds), ``twinv2_no_log_size`` (attention without ln n),
  ``twinv2_random_groups`` (random grouping with the same size rule instead of k-means),
  ``twinv2_gamma5`` / ``twinv2_gamma80`` (gamma sweep; gamma = 20 is ``twinv2`` itself) and
  ``twinv2_flat_k10`` (one-level k-means with a fixed k = 10 clusters per completion group); and
  ``twin_as_landed`` / ``twinv2_as_landed`` (the shared score's first defaults: 64-d ids, Xavier ``W_q``,
  the paper's relevance);
- references (``--references``): ``sim_hard_full``, SIM's original design: the category search over the
  whole history (L = the longest history before the test end, at most ``--full-cap``);
- L sweep (``--sweep``): ``twin`` and ``twinv2`` at L = 100 and 2,000, and ``twin_full``, TWIN over the
  whole history (same L as ``sim_hard_full``) as the cost and quality reference;
- per run: test AUC/GAUC/log loss overall, by activity tertile and by **headroom bucket** (each test
  sample by the distance to the user's previous behavior of the target's category: within 50, within L,
  beyond L, never; L = ``--long-len`` for every variant, so the buckets hold the same rows in every row of
  the table), the GSU diagnostics of ``twinv2 evaluate --diagnostics`` on the test samples (with the
  ground-truth NDCG@k of the kept set on synthetic data, beside ``sim_hard``'s on the same samples) and over
  training, epochs run, train time, samples/s and peak RSS (one process per run);
- oracle: the generator's true click probability (``ground_truth/click_prob.npy``) scored on the same test
  rows, overall and per bucket; each model's share of its headroom is ``(GAUC - 0.5) / (oracle GAUC - 0.5)``;
- headroom: ``twinv2.data.headroom.life_cycle_headroom`` of the test window at L;
- paired comparison (``paired``): for each seed, GAUC(a) - GAUC(b) on the same test rows, for twinv2
  against every other variant, twin against sim_hard and twinv2_paper against twin_paper; mean, standard
  error of the per-seed differences (std / sqrt(seeds)), ``ahead`` = positive in every seed and mean > 2
  standard errors (``behind`` the mirror image; both null with fewer than 2 seeds); the same overall, in
  the high-activity tertile and per headroom bucket;
- targets (``targets``): the issue's targets computed from the run (booleans, null when not computable).

Outputs: ``--out`` JSON (``results``: name -> ``auc_mean``, ``auc_std``, ``gauc_mean``, ``gauc_std``,
``gauc_high_mean``, ``buckets``, ``epochs_run_mean``, ``train_seconds_mean``, ``gsu_*`` diagnostics
(``gsu_gt_ndcg``...), ``oracle_headroom_share``...; top level ``oracle``, ``headroom``, ``paired``,
``targets``), Markdown tables beside it (``.md``) and PNG plots (GAUC by model, by activity tertile, by
headroom bucket, GAUC vs L). Each finished run is stored under ``--work/runs`` so an interrupted benchmark
resumes where it stopped (delete the folder to start over). ``--quick`` is a small smoke run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from twinv2._io import write_json_atomic
from twinv2.compress import ClusterConfig, EmbeddingSource
from twinv2.compress.cadence import cadence_snapshots, compress_on_cadence, version_folder
from twinv2.data.headroom import SAMPLE_BUCKETS, default_category_column, life_cycle_headroom
from twinv2.data.split import TemporalSplit, make_samples
from twinv2.data.store import Dataset, load_dataset
from twinv2.models import LONG_TERM_NAMES
from twinv2.train.config import TrainConfig, apply_overrides, config_to_dict
from twinv2.train.evaluate import ACTIVITY_GROUPS, evaluate_checkpoint, metrics_report
from twinv2.train.loop import train_model
from twinv2.train.report import (
    bar_plot,
    fmt_mean_std,
    grouped_bar_plot,
    line_plot,
    markdown_table,
    mean_std,
    write_text,
)

console = Console(stderr=True)


@dataclass(frozen=True)
class Variant:
    """One row of the results: a model, the clustering it reads (twinv2 only) and model overrides."""

    name: str
    model: str
    description: str
    cluster: ClusterConfig | None = None  # None = the benchmark's twinv2 clustering (--split-by, --max-clusters)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    long_len: int | str | None = None  # GSU input length L; None = --long-len; "full" = the longest history

    def compress_key(self, default: ClusterConfig | None = None) -> str:
        cfg = self.cluster or default or ClusterConfig()
        text = json.dumps([dataclasses.asdict(cfg), "cooccurrence"], sort_keys=True)
        return f"cooccurrence-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


# DARE runs in its own published form: decoupled attention embeddings with the paper's relevance score.
MODEL_OVERRIDES: dict[str, dict[str, Any]] = {"dare": {"relevance": "paper"}}
MODEL_VARIANTS = [Variant(m, m, f"{m} (default settings" + (", relevance: paper)" if m in MODEL_OVERRIDES else ")"),
                          model_overrides=MODEL_OVERRIDES.get(m, {})) for m in LONG_TERM_NAMES]
ABLATIONS = [
    Variant("twinv2_paper", "twinv2", "twinv2 with the paper's relevance score (no exact-match term)",
            model_overrides={"relevance": "paper"}),
    Variant("twin_paper", "twin", "twin with the paper's relevance score (no exact-match term)",
            model_overrides={"relevance": "paper"}),
    Variant("twinv2_no_log_size", "twinv2", "twinv2 without the ln n term in GSU and ESU",
            model_overrides={"use_log_size": False}),
    Variant("twinv2_random_groups", "twinv2", "random grouping (same size rule) instead of k-means",
            cluster=ClusterConfig(method="random")),
    Variant("twinv2_gamma5", "twinv2", "hierarchical k-means, gamma = 5", cluster=ClusterConfig(gamma=5)),
    Variant("twinv2_gamma80", "twinv2", "hierarchical k-means, gamma = 80", cluster=ClusterConfig(gamma=80)),
    Variant("twinv2_flat_k10", "twinv2", "flat k-means, fixed k = 10 clusters per completion group",
            cluster=ClusterConfig(method="flat", flat_k=10)),
]
# The shared score as first landed (64-d ids, Xavier W_q, the paper's relevance), to show what the defaults changed.
ABLATIONS += [Variant(f"{m}_as_landed", m, f"{m} with the first defaults: 64-d item ids, Xavier-initialised W_q, "
                      "relevance: paper", model_overrides={"id_dim": 64, "score_init": "xavier", "relevance": "paper"})
              for m in ("twin", "twinv2")]
ABLATION_NAMES = [a.name for a in ABLATIONS]
# Reference rows: SIM's original design, the category search over the whole history.
REFERENCES = [Variant("sim_hard_full", "sim_hard", "sim_hard over the whole history (L = the longest history before "
                      "the test end, at most --full-cap)", long_len="full")]
REFERENCE_NAMES = [v.name for v in REFERENCES]
# L sweep (issue: GAUC vs L) and TWIN on the whole history as the cost/quality reference.
SWEEP = [Variant(f"{m}_L{n}", m, f"{m} with L = {n}", long_len=n) for m in ("twin", "twinv2") for n in (100, 2000)]
SWEEP.append(Variant("twin_full", "twin", "twin over the whole history (L = the longest history before the test "
                     "end, at most --full-cap)", long_len="full"))
SWEEP_NAMES = [v.name for v in SWEEP]
# Paired comparisons beside "twinv2 against every other variant".
EXTRA_PAIRS = (("twin", "sim_hard"), ("twinv2_paper", "twin_paper"))


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
    p.add_argument("--references", default=",".join(REFERENCE_NAMES), help="comma-separated reference rows "
                   f"({','.join(REFERENCE_NAMES)}), or 'none'")
    p.add_argument("--sweep", default="none", help=f"comma-separated L-sweep variants ({','.join(SWEEP_NAMES)}), "
                   "'all' or 'none'")
    p.add_argument("--sweep-seeds", type=int, default=None, help="seeds of the sweep variants (default --seeds)")
    p.add_argument("--regime", choices=("default", "lifecycle"), default=None,
                   help="synthetic regime (the generator's scale of that name) when --dataset is not given")
    p.add_argument("--raw-cap", type=int, default=100, help="twinv2: raw behaviors leading the long sequence "
                   "(-1: the library's data.raw_cap, no cap); the rest of L is virtual items")
    p.add_argument("--split-by", default="auto", help="twinv2's clustering: cluster within (completion group x "
                   "this inherent categorical); 'auto' = the dataset's category column, 'none' = the paper's "
                   "grouping (ablations that set their own clustering keep it)")
    p.add_argument("--max-clusters", default="auto", help="twinv2's clustering: per-user budget of virtual items; "
                   "'auto' = L - raw cap (the compressed life cycle fits the GSU), 'none' = gamma alone")
    p.add_argument("--full-cap", type=int, default=10_000, help="cap on twin_full's L (the longest history)")
    p.add_argument("--cadence", type=int, default=8, help="compressed versions between the split snapshot and "
                   "the end (the offline job's cadence; 8 = every 2.5%% of the events)")
    p.add_argument("--eval-points", type=int, default=2, help="validations per epoch (early stopping and the GSU "
                   "diagnostics over training come from them)")
    p.add_argument("--patience", type=int, default=2, help="stop a run after this many validations without a "
                   "better validation GAUC (0 = never stop early); the best checkpoint is tested")
    p.add_argument("--long-len", type=int, default=500, help="GSU input length L (all models)")
    p.add_argument("--esu-size", type=int, default=100, help="ESU size k (all two-stage models)")
    p.add_argument("--max-train-samples", type=int, default=0, help="seeded train subsample (0 = every event of "
                   "the train window: the full budget)")
    p.add_argument("--max-valid-samples", type=int, default=10_000)
    p.add_argument("--max-test-samples", type=int, default=0, help="seeded test subsample (0 = the whole test "
                   "window)")
    p.add_argument("--epochs", type=int, default=3, help="most epochs per run (early stopping may end it sooner)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--scale", default="default", help="synthetic scale when --dataset is not given")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2, help="compression worker processes")
    p.add_argument("--jobs", type=int, default=None, help="training runs at a time, one process each "
                   "(default: the number of cores); each run gets (cores - 1) // jobs torch threads, at least 1")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every run's best.pt")
    p.add_argument("--reuse-compressed", action="store_true", help="use the finished compressed versions in "
                   "--work as they are (no rerun of the job on them)")
    p.add_argument("--finished-only", action="store_true", help="assemble the results of the runs already "
                   "finished in --work (no training); the output says complete: false if any is missing")
    p.add_argument("--report-only", action="store_true", help="rewrite the tables and plots of an existing --out "
                   "JSON (e.g. of an interrupted run) and exit")
    p.add_argument("--quick", action="store_true", help="smoke run: small scale, tiny budgets, 2 seeds")
    args = p.parse_args(argv)
    if args.quick:
        args.scale, args.seeds, args.long_len, args.esu_size = "small", min(args.seeds, 2), 100, 20
        # The small scale's whole test window (a few thousand events) is as cheap as a subsample of it.
        args.max_train_samples, args.max_valid_samples, args.max_test_samples = 3_000, 1_000, 0
        args.epochs, args.eval_points, args.workers = 1, 1, 1
    for name in ("max_train_samples", "max_valid_samples", "max_test_samples"):
        if getattr(args, name) == 0:
            setattr(args, name, None)
    if args.regime is not None:
        args.scale = args.regime
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


def _long_len(args: argparse.Namespace, variant: Variant) -> int:
    if variant.long_len == "full":
        return args.full_len
    return int(variant.long_len or args.long_len)


def _config(args: argparse.Namespace, variant: Variant, seed: int) -> TrainConfig:
    """The training config of one (variant, seed); ``args.num_train_samples`` = train samples per epoch."""
    batches_per_epoch = -(-args.num_train_samples // args.batch_size)
    values = {"model.long_term": variant.model, "model.esu_size": args.esu_size,
              "data.long_len": _long_len(args, variant),
              "data.max_train_samples": args.max_train_samples, "data.max_valid_samples": args.max_valid_samples,
              "data.max_test_samples": args.max_test_samples, "train.epochs": args.epochs,
              "train.batch_size": args.batch_size, "train.seed": seed, "train.device": args.device,
              "train.patience": args.patience, "train.num_threads": args.threads,
              "train.eval_every": max(1, batches_per_epoch // max(1, args.eval_points))}
    if args.raw_cap is not None and args.raw_cap >= 0:
        values["data.raw_cap"] = args.raw_cap
    if args.quick:
        values.update({"model.id_dim": 16, "model.num_heads": 2, "model.head_dim": 8, "model.mlp_dims": [32]})
    values.update({f"model.{k}": v for k, v in variant.model_overrides.items()})
    return apply_overrides(TrainConfig(), values, source="quality benchmark")


def _compressed(ds: Dataset, work: Path, variant: Variant, snapshots: list[int], args: argparse.Namespace
                ) -> list[Path]:
    """The variant's compressed life cycles, one version per cadence snapshot (resumable, reused)."""
    config = variant.cluster or args.twinv2_cluster
    root = work / "compressed" / variant.compress_key(args.twinv2_cluster)
    console.print(f"compressing for {variant.name} ({len(snapshots)} versions on a cadence): {config}",
                  highlight=False)
    return compress_on_cadence(ds.path, root, snapshots, embeddings=EmbeddingSource(), config=config,
                               seed=0, workers=args.workers, progress=True)


def _twinv2_cluster(args: argparse.Namespace, ds: Dataset) -> ClusterConfig:
    """The clustering of twinv2 and of the ablations that do not set their own: split by the dataset's
    category (``--split-by``) and a per-user budget so raw part + virtual items fit L (``--max-clusters``)."""
    split_by = {"auto": default_category_column(ds.manifest) if ds.manifest.item_categoricals else None,
                "none": None}.get(args.split_by, args.split_by)
    raw_cap = args.raw_cap if args.raw_cap is not None and args.raw_cap >= 0 else None
    if args.max_clusters == "auto":
        max_clusters = None if raw_cap is None else max(1, args.long_len - raw_cap)
    else:
        max_clusters = None if args.max_clusters == "none" else int(args.max_clusters)
    return ClusterConfig(split_by=split_by, max_clusters=max_clusters)


def _settings(args: argparse.Namespace, ds: Dataset) -> dict[str, Any]:
    return {"dataset": str(ds.path.resolve()), "num_events": ds.manifest.num_events, "long_len": args.long_len,
            "esu_size": args.esu_size, "max_train_samples": args.max_train_samples,
            "max_valid_samples": args.max_valid_samples, "max_test_samples": args.max_test_samples,
            "epochs": args.epochs, "patience": args.patience, "num_train_samples": args.num_train_samples,
            "batch_size": args.batch_size, "quick": args.quick,
            # --dataset with --regime: a copy of that regime generated elsewhere (same scale and seed 0).
            "regime": args.regime or (None if args.dataset else args.scale),
            "raw_cap": args.raw_cap, "full_len": args.full_len,
            "twinv2_cluster": dataclasses.asdict(args.twinv2_cluster), "eval_points": args.eval_points,
            "full_len_covers_test_samples": args.full_coverage, "cadence": args.cadence}


def _run_one(ds: Dataset, work: Path, variant: Variant, seed: int, args: argparse.Namespace,
             compressed: list[Path] | None, settings: dict[str, Any]) -> dict[str, Any] | None:
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
    if args.finished_only:
        return None
    quiet = Console(file=io.StringIO())
    t0 = time.perf_counter()
    if args.jobs <= 1:
        console.print(f"[bold]{variant.name}[/] seed {seed}", highlight=False)
    result = train_model(ds, run_dir / "model", cfg, compressed=compressed,
                         overwrite=True, console=quiet, show_progress=args.jobs <= 1)
    # Headroom buckets at the benchmark's L for every variant, so a bucket holds the same rows in every row.
    report = evaluate_checkpoint(result.best_checkpoint, "test", dataset=ds,
                                 compressed=compressed, device=args.device,
                                 num_threads=args.threads, show_progress=False, diagnostics=True,
                                 bucket_len=args.long_len)
    batches_per_epoch = -(-result.num_train_samples // cfg.train.batch_size)
    record = {
        "name": variant.name, "model": variant.model, "seed": seed, "settings": settings, "config": identity,
        "auc": report["auc"], "gauc": report["gauc"], "logloss": report["logloss"],
        "gauc_users": report["gauc_users"], "gauc_impressions": report["gauc_impressions"],
        "num_test_samples": report["num_samples"],
        "groups": {g: {k: report["groups"][g][k] for k in ("auc", "gauc", "logloss", "num_samples", "num_users",
                                                            "history_length_min", "history_length_max")}
                   for g in ACTIVITY_GROUPS},
        "buckets": None if report.get("buckets") is None else {
            b: {k: report["buckets"][b][k] for k in ("auc", "gauc", "logloss", "num_samples", "gauc_users",
                                                      "gauc_impressions")} for b in SAMPLE_BUCKETS},
        "valid_gauc": result.best.get("gauc"), "train_samples": result.num_train_samples,
        "steps": result.steps, "epochs_run": result.steps / max(1, batches_per_epoch),
        "best_step": result.best.get("step"), "best_epoch": (result.best.get("step") or 0) / max(1, batches_per_epoch),
        "stopped_early": result.stopped_early,
        "samples_per_second": result.samples_per_second, "train_seconds": result.train_seconds,
        "wall_seconds": time.perf_counter() - t0, "long_len": cfg.data.long_len,
        "diagnostics": report["diagnostics"],
        "validations": [{k: v for k, v in h.items() if k in ("step", "gauc", "gsu_category_recall",
                                                              "gsu_category_hit_rate", "gsu_relevance_abs",
                                                              "gsu_cross_bias_abs")} for h in result.history],
        # One process per run (max_tasks_per_child=1), so the peak RSS is this run's.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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


def _oracle(ds: Dataset, split: TemporalSplit, args: argparse.Namespace) -> dict[str, Any] | None:
    """AUC/GAUC of the generator's true click probability on the same test rows as every run (synthetic
    data only; None for a dataset without ``ground_truth/click_prob.npy``)."""
    from twinv2.data.synth import load_click_prob
    from twinv2.errors import DataValidationError

    try:
        prob = load_click_prob(ds.path)
    except DataValidationError:
        return None
    # Same seeded subsample as evaluate_checkpoint(split="test", max_samples=..., seed=0).
    samples = make_samples(ds, split, "test", max_samples=args.max_test_samples, seed=0)
    report = metrics_report(ds, samples, prob[samples.event_row].astype(np.float64), split.window("test")[0],
                            long_len=args.long_len)
    return {"auc": report["auc"], "gauc": report["gauc"], "logloss": report["logloss"],
            "gauc_users": report["gauc_users"], "gauc_impressions": report["gauc_impressions"],
            "groups": {g: {"auc": report["groups"][g]["auc"], "gauc": report["groups"][g]["gauc"]}
                       for g in ACTIVITY_GROUPS},
            "buckets": None if report.get("buckets") is None else {
                b: {k: report["buckets"][b][k] for k in ("auc", "gauc", "num_samples", "gauc_users",
                                                          "gauc_impressions")} for b in SAMPLE_BUCKETS},
            "bucket_definition": report.get("bucket_definition")}


def _add_headroom_share(results: dict[str, dict[str, Any]], oracle: dict[str, Any] | None) -> None:
    """Each variant's share of the oracle's headroom: (GAUC - 0.5) / (oracle GAUC - 0.5)."""
    if oracle is None:
        return
    for r in results.values():
        r["oracle_headroom_share"] = (r["gauc_mean"] - 0.5) / (oracle["gauc"] - 0.5)


# Diagnostics aggregated over seeds (mean and std): learned GSUs, and the ground-truth keys of any GSU.
DIAG_KEYS = ("category_recall", "category_hit_rate", "retrieval_lift", "relevance_abs", "cross_bias_abs", "match_abs",
             "log_size_abs", "virtual_share", "selected_age_days_median", "esu_weight_same_category",
             "esu_weight_same_category_uniform", "beyond_L_same_category_kept_share", "beyond_L_virtual_kept_share",
             "beyond_L_esu_weight_same_category", "beyond_L_esu_weight_when_kept", "gt_ndcg", "gt_gain_share",
             "gt_dcg", "gt_ndcg_sim_hard", "gt_gain_share_sim_hard", "gt_dcg_sim_hard", "gt_ndcg_recent")


def _values(rs: list[dict[str, Any]], *path: str) -> list[float]:
    """``r[path...]`` of every run that has it (None and missing left out)."""
    out = []
    for r in rs:
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None:
            out.append(float(v))
    return out


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
        high_m, high_s = mean_std([r["groups"]["high"]["gauc"] for r in rs])
        results[v.name] = {
            "model": v.model, "description": v.description, "seeds": [r["seed"] for r in rs],
            "long_len": rs[0].get("long_len"),
            "auc_mean": auc_m, "auc_std": auc_s, "gauc_mean": gauc_m, "gauc_std": gauc_s,
            "logloss_mean": ll_m, "logloss_std": ll_s, "gauc_high_mean": high_m, "gauc_high_std": high_s,
            "groups": {g: dict(zip(("gauc_mean", "gauc_std"), mean_std([r["groups"][g]["gauc"] for r in rs]),
                                   strict=True)) for g in ACTIVITY_GROUPS},
            "buckets": None if any(r.get("buckets") is None for r in rs) else {
                b: {"auc_mean": mean_std(_values(rs, "buckets", b, "auc"))[0],
                    "auc_std": mean_std(_values(rs, "buckets", b, "auc"))[1],
                    "gauc_mean": mean_std(_values(rs, "buckets", b, "gauc"))[0],
                    "gauc_std": mean_std(_values(rs, "buckets", b, "gauc"))[1],
                    "num_samples": rs[0]["buckets"][b]["num_samples"]} for b in SAMPLE_BUCKETS},
            "samples_per_second_mean": mean_std([r["samples_per_second"] for r in rs])[0],
            "train_seconds_mean": mean_std([r["train_seconds"] for r in rs])[0],
            "epochs_run_mean": mean_std(_values(rs, "epochs_run"))[0],
            "best_epoch_mean": mean_std(_values(rs, "best_epoch"))[0],
            "stopped_early": sum(bool(r.get("stopped_early")) for r in rs),
            "train_samples": rs[0].get("train_samples"),
            "peak_rss_mb_max": max(r.get("peak_rss_mb", float("nan")) for r in rs),
            "per_seed": [{k: r[k] for k in ("seed", "auc", "gauc", "logloss")} for r in rs],
        }
        for key in DIAG_KEYS:
            values = _values(rs, "diagnostics", key)
            if values:
                m, sd = mean_std(values)
                results[v.name][f"gsu_{key}"] = m
                results[v.name][f"gsu_{key}_std"] = sd
    return results


def paired_difference(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Paired difference of a metric between two variants over their common seeds (same test rows).

    Args:
        a, b: seed -> metric (e.g. test GAUC); seeds missing from either, or NaN in either, are left out.
    Returns:
        ``seeds``, ``diffs`` (a - b per seed), ``n``, ``mean``, ``se`` = sample std of the diffs / sqrt(n)
        (None for n < 2), ``ahead`` = every diff > 0 and mean > 2 se, ``behind`` = every diff < 0 and
        mean < -2 se (both None for n < 2: one seed cannot tell a difference from seed noise).
    """
    seeds = sorted(s for s in set(a) & set(b)
                   if a[s] is not None and b[s] is not None and not (math.isnan(a[s]) or math.isnan(b[s])))
    diffs = [a[s] - b[s] for s in seeds]
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else None
    se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n > 1 else None
    out: dict[str, Any] = {"seeds": seeds, "diffs": diffs, "n": n, "mean": mean, "se": se, "ahead": None,
                           "behind": None}
    if n > 1:
        out["ahead"] = bool(all(d > 0 for d in diffs) and mean > 2 * se)
        out["behind"] = bool(all(d < 0 for d in diffs) and mean < -2 * se)
    return out


def _per_seed(records: list[dict[str, Any]], name: str, *path: str) -> dict[int, float]:
    out = {}
    for r in records:
        if r["name"] != name:
            continue
        v: Any = r
        for key in path:
            v = v.get(key) if isinstance(v, dict) else None
        if v is not None:
            out[r["seed"]] = float(v)
    return out


def paired_comparisons(records: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """The ``paired`` block: ``"a_vs_b"`` -> :func:`paired_difference` of test GAUC overall, plus ``high``
    (high-activity tertile) and ``buckets`` (per headroom bucket), for twinv2 against every other variant in
    ``names`` and the :data:`EXTRA_PAIRS`."""
    pairs = [("twinv2", n) for n in names if n != "twinv2" and "twinv2" in names]
    pairs += [p for p in EXTRA_PAIRS if p[0] in names and p[1] in names]
    out: dict[str, dict[str, Any]] = {}
    for a, b in pairs:
        entry = {"a": a, "b": b, **paired_difference(_per_seed(records, a, "gauc"), _per_seed(records, b, "gauc"))}
        entry["high"] = paired_difference(_per_seed(records, a, "groups", "high", "gauc"),
                                          _per_seed(records, b, "groups", "high", "gauc"))
        entry["buckets"] = {bucket: paired_difference(_per_seed(records, a, "buckets", bucket, "gauc"),
                                                      _per_seed(records, b, "buckets", bucket, "gauc"))
                            for bucket in SAMPLE_BUCKETS}
        out[f"{a}_vs_{b}"] = entry
    return out


def compute_targets(results: dict[str, dict[str, Any]], paired: dict[str, dict[str, Any]], regime: str | None
                    ) -> tuple[dict[str, bool | None], dict[str, str]]:
    """The issue's targets from a run: name -> True / False / None (not computable here), and a detail line each.

    Lifecycle targets are None outside the lifecycle regime, default-regime targets outside the default one.
    "Models" are the long-term models plus the ``sim_hard_full`` reference row, where present.
    """
    targets: dict[str, bool | None] = {}
    detail: dict[str, str] = {}
    models = [n for n in results if n in LONG_TERM_NAMES or n in REFERENCE_NAMES]

    def ahead_of_all(a: str, others: list[str]) -> bool | None:
        flags = [paired.get(f"{a}_vs_{b}", {}).get("ahead") for b in others]
        return None if not others or any(f is None for f in flags) else all(flags)

    lifecycle, default = regime == "lifecycle", regime == "default"
    others = [m for m in models if m != "twinv2"]
    targets["lifecycle_twinv2_ahead_of_all"] = ahead_of_all("twinv2", others) if lifecycle and "twinv2" in results \
        else None
    detail["lifecycle_twinv2_ahead_of_all"] = f"paired GAUC, twinv2 vs {', '.join(others)}"
    best_high = max(models, key=lambda m: results[m]["gauc_high_mean"]) if models else None
    targets["lifecycle_twinv2_best_high_tertile"] = (best_high == "twinv2") if lifecycle and best_high else None
    detail["lifecycle_twinv2_best_high_tertile"] = f"best mean high-tertile GAUC: {best_high}"
    for a, b in (("twinv2", "twin"), ("twinv2_paper", "twin_paper")):
        key = f"lifecycle_{a}_ahead_of_{b}"
        targets[key] = paired.get(f"{a}_vs_{b}", {}).get("ahead") if lifecycle else None
        detail[key] = f"paired GAUC, {a} vs {b} (the same options)"
    shares = {m: results[m].get("oracle_headroom_share") for m in models}
    shares = {m: v for m, v in shares.items() if v is not None and not math.isnan(v)}
    best = max(shares, key=shares.get) if shares else None
    targets["lifecycle_best_oracle_share_at_least_0.6"] = (shares[best] >= 0.6) if lifecycle and best else None
    detail["lifecycle_best_oracle_share_at_least_0.6"] = (f"best: {best} {shares[best]:.3f}" if best
                                                          else "no oracle (not synthetic data)")
    for m in ("twin", "twinv2"):
        key = f"default_{m}_not_behind_sim_hard"
        behind = paired.get(f"{m}_vs_sim_hard", {}).get("behind")
        targets[key] = (not behind) if default and behind is not None else None
        detail[key] = f"paired GAUC, {m} vs sim_hard: not behind by every seed and 2 standard errors"
    recalls = {m: results[m].get("gsu_category_recall") for m in ("twin", "twinv2") if m in results}
    targets["gsu_recall_at_least_0.9"] = (all(v is not None and v >= 0.9 for v in recalls.values())
                                          if recalls else None)
    detail["gsu_recall_at_least_0.9"] = ", ".join(f"{m} {_fmt(v)}" for m, v in recalls.items())
    targets["gt_ndcg_reported"] = any(r.get("gsu_gt_ndcg") is not None for r in results.values()) or None
    detail["gt_ndcg_reported"] = "ground-truth NDCG@k in the diagnostics (synthetic data only)"
    return targets, detail


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


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if std is None or math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _diff(p: dict[str, Any]) -> str:
    """``+0.0123 ± 0.0040 (3/3 > 0)``: mean ± standard error of a paired difference and its sign count."""
    if not p or not p.get("n"):
        return "n/a"
    se = "" if p["se"] is None else f" ± {p['se']:.4f}"
    return f"{p['mean']:+.4f}{se} ({sum(d > 0 for d in p['diffs'])}/{p['n']} > 0)"


def _verdict(p: dict[str, Any]) -> str:
    if p.get("ahead") is None:
        return "n/a (< 2 seeds)"
    return "**ahead**" if p["ahead"] else "**behind**" if p["behind"] else "not separable"


def bucket_table(results: dict[str, Any], oracle: dict[str, Any] | None) -> str:
    """Model x headroom bucket test GAUC (mean ± std over seeds), with the samples per bucket and the oracle."""
    names = [n for n in results if results[n].get("buckets")]
    if not names:
        return ""
    counts = results[names[0]]["buckets"]
    rows = [[n] + [_pm(results[n]["buckets"][b]["gauc_mean"], results[n]["buckets"][b]["gauc_std"])
                   for b in SAMPLE_BUCKETS] for n in names]
    if oracle is not None and oracle.get("buckets"):
        rows.append(["oracle"] + [_pm(oracle["buckets"][b]["gauc"], None) for b in SAMPLE_BUCKETS])
    return markdown_table(["model / variant"] + [f"{b} ({counts[b]['num_samples']:,} samples)" for b in SAMPLE_BUCKETS],
                          rows)


def paired_table(paired: dict[str, dict[str, Any]]) -> str:
    """One row per paired comparison: GAUC(a) - GAUC(b), overall, high tertile and beyond-L bucket."""
    if not paired:
        return ""
    rows = [[p["a"], p["b"], _diff(p), _verdict(p), _diff(p["high"]), _diff(p["buckets"]["beyond_L"]),
             _verdict(p["buckets"]["beyond_L"])] for p in paired.values()]
    return markdown_table(["a", "b", "GAUC a - b (mean ± s.e.)", "verdict", "high tertile", "beyond-L bucket",
                           "beyond-L verdict"], rows, align="llrlrrl")


def write_outputs(out: Path, results: dict[str, Any], payload: dict[str, Any]) -> str:
    """Markdown tables + plots beside ``out``; returns the main table."""
    names = list(results)
    rows = [[n, results[n].get("long_len"), fmt_mean_std([s["auc"] for s in results[n]["per_seed"]]),
             fmt_mean_std([s["gauc"] for s in results[n]["per_seed"]]),
             fmt_mean_std([s["logloss"] for s in results[n]["per_seed"]])]
            + [f"{results[n]['groups'][g]['gauc_mean']:.4f} ± {results[n]['groups'][g]['gauc_std']:.4f}"
               for g in ACTIVITY_GROUPS]
            + [_fmt(results[n].get("gsu_category_recall")), _fmt(results[n].get("gsu_gt_ndcg")),
               _fmt(results[n].get("oracle_headroom_share")), _fmt(results[n].get("epochs_run_mean"), ".2f"),
               f"{results[n]['train_seconds_mean']:.0f}", f"{results[n]['samples_per_second_mean']:.0f}",
               f"{results[n]['peak_rss_mb_max']:.0f}", len(results[n]["seeds"])] for n in names]
    table = markdown_table(["model / variant", "L", "AUC", "GAUC", "log loss", "GAUC low", "GAUC mid", "GAUC high",
                            "GSU recall", "GT NDCG@k", "oracle share", "epochs", "train s", "train samples/s",
                            "peak RSS MB", "seeds"], rows)
    learned = [n for n in names if "gsu_category_recall" in results[n]]
    diag_rows = [[n] + [_fmt(results[n].get(f"gsu_{k}"), f) for k, f in (
        ("category_hit_rate", ".3f"), ("retrieval_lift", ".2f"), ("category_recall", ".3f"),
        ("relevance_abs", ".2f"), ("cross_bias_abs", ".2f"), ("match_abs", ".2f"), ("log_size_abs", ".2f"),
        ("virtual_share", ".3f"), ("selected_age_days_median", ".1f"), ("esu_weight_same_category", ".3f"),
        ("esu_weight_same_category_uniform", ".3f"), ("beyond_L_virtual_kept_share", ".3f"),
        ("beyond_L_esu_weight_same_category", ".3f"))] for n in learned]
    diag_table = markdown_table(["model", "hit rate", "lift", "recall", "|relevance|", "|cross bias|", "|match|",
                                 "ln n", "virtual share", "median age (days)", "ESU weight on same category",
                                 "same if uniform", "beyond L: virtual of the category kept",
                                 "beyond L: ESU weight on it"], diag_rows) if learned else ""
    gt_names = [n for n in names if results[n].get("gsu_gt_ndcg") is not None
                or results[n].get("gsu_gt_ndcg_sim_hard") is not None]
    gt_rows = [[n] + [_fmt(results[n].get(f"gsu_{k}"), f) for k, f in (
        ("gt_ndcg", ".3f"), ("gt_gain_share", ".3f"), ("gt_dcg", ".2f"), ("gt_ndcg_sim_hard", ".3f"),
        ("gt_dcg_sim_hard", ".2f"), ("gt_ndcg_recent", ".3f"))] for n in gt_names]
    gt_table = markdown_table(["model", "GT NDCG@k", "GT gain share", "GT DCG@k", "sim_hard NDCG@k (same samples)",
                               "sim_hard DCG@k", "k most recent NDCG@k"], gt_rows) if gt_names else ""
    s = payload["settings"]
    budget = ("every train-window event" if s["max_train_samples"] is None
              else f"a seeded {s['max_train_samples']:,} train-window events")
    header = (f"# Quality benchmark\n\nDataset `{s['dataset']}` (regime `{s.get('regime')}`); L = {s['long_len']} "
              f"unless the L column says otherwise, k = {s['esu_size']}; {budget} "
              f"({s.get('num_train_samples', 0):,} samples per epoch), at most {s['epochs']} epoch(s) with early "
              f"stopping on validation GAUC (patience {s.get('patience')} of {s.get('eval_points')} validations per "
              f"epoch; the epochs column is what ran), batch {s['batch_size']}; test = "
              f"{'the whole test window' if s['max_test_samples'] is None else s['max_test_samples']}. Mean ± "
              "sample std over seeds; GAUC by activity = history-length tertiles of test users (mean over seeds).\n\n")
    oracle, headroom = payload.get("oracle"), payload.get("headroom")
    extra = ""
    if oracle is not None:
        extra += (f"\n\nOracle (true click probability) on the same test rows: AUC {oracle['auc']:.4f}, "
                  f"GAUC {oracle['gauc']:.4f}.")
    if headroom is not None and headroom.get("shares"):
        sh = headroom["shares"]
        extra += ("\n\nLife-cycle headroom of the test window (positives' previous same-category behavior, L = "
                  f"{headroom['long_len']}): within 50 {sh['within_50']:.1%}, within L {sh['within_L']:.1%}, beyond L "
                  f"{sh['beyond_L']:.1%}, beyond 10 L {sh['beyond_10L']:.1%}, never {sh['never']:.1%}.")
    buckets = bucket_table(results, oracle)
    if buckets:
        extra += ("\n\n## GAUC by headroom bucket (test samples by the distance to the user's previous behavior of "
                  f"the target's category; L = {s['long_len']} for every row)\n\n" + buckets)
    paired = payload.get("paired") or {}
    if paired:
        extra += ("\n\n## Paired comparisons (per-seed GAUC differences on the same test rows; ahead = positive "
                  "in every seed and mean > 2 standard errors)\n\n" + paired_table(paired))
    targets = payload.get("targets") or {}
    if targets:
        detail = payload.get("targets_detail") or {}
        extra += "\n\n## Targets\n\n" + markdown_table(
            ["target", "met", "detail"], [[k, "n/a" if v is None else ("yes" if v else "**no**"), detail.get(k, "")]
                                          for k, v in targets.items()], align="lll")
    if diag_table:
        extra += "\n\n## GSU diagnostics (test samples, mean over seeds)\n\n" + diag_table
    if gt_table:
        extra += ("\n\n## Ground-truth retrieval quality (test samples, mean over seeds; true relevance = "
                  "max(0, cos) of the generator's item vectors)\n\n" + gt_table)
    write_text(out.with_suffix(".md"), header + table + extra + "\n")
    stem = out.with_suffix("")
    bar_plot(f"{stem}_gauc_by_model.png", names, [results[n]["gauc_mean"] for n in names],
             [results[n]["gauc_std"] for n in names], ylabel="test GAUC (mean ± std over seeds)",
             title="GAUC by model and variant", highlight="twinv2")
    models = [n for n in names if n in LONG_TERM_NAMES] or names
    grouped_bar_plot(f"{stem}_gauc_by_group.png", models, [f"{g} activity" for g in ACTIVITY_GROUPS],
                     [[results[n]["groups"][g]["gauc_mean"] for g in ACTIVITY_GROUPS] for n in models],
                     [[results[n]["groups"][g]["gauc_std"] for g in ACTIVITY_GROUPS] for n in models],
                     ylabel="test GAUC", title="GAUC by user-activity tertile (mean ± std over seeds)")
    bucket_models = [n for n in models if results[n].get("buckets")]
    if bucket_models:
        grouped_bar_plot(f"{stem}_gauc_by_bucket.png", bucket_models, list(SAMPLE_BUCKETS),
                         [[results[n]["buckets"][b]["gauc_mean"] for b in SAMPLE_BUCKETS] for n in bucket_models],
                         [[results[n]["buckets"][b]["gauc_std"] for b in SAMPLE_BUCKETS] for n in bucket_models],
                         ylabel="test GAUC", title="GAUC by headroom bucket (mean ± std over seeds)")
    series = {}
    for model in ("twin", "twinv2"):
        points = sorted((results[n]["long_len"], results[n]["gauc_mean"]) for n in names
                        if results[n]["model"] == model and (n == model or n.startswith(f"{model}_L")
                                                             or n == f"{model}_full"))
        if len(points) > 1:
            series[model] = ([p[0] for p in points], [p[1] for p in points])
    if series:
        line_plot(f"{stem}_gauc_vs_L.png", series, xlabel="GSU input length L (log scale)", ylabel="test GAUC",
                  title="GAUC vs L (mean over seeds)", xlog=True)
    return table


_WORKER_DATASETS: dict[str, Dataset] = {}


def _worker(path: str, variant: Variant, seed: int, args: argparse.Namespace,
            compressed: list[Path] | None, settings: dict[str, Any], work: Path) -> dict[str, Any]:
    """One run in a worker process (the dataset is loaded once per process)."""
    if path not in _WORKER_DATASETS:
        _WORKER_DATASETS[path] = load_dataset(path)
    return _run_one(_WORKER_DATASETS[path], work, variant, seed, args, compressed, settings)


def main(argv: list[str] | None = None) -> int:
    import concurrent.futures as cf
    import multiprocessing as mp

    args = parse_args(argv)
    if args.report_only:
        # Tables and plots from an existing (possibly interrupted: "complete": false) results file.
        payload = json.loads(args.out.read_text())
        print(write_outputs(args.out, payload["results"], payload))
        return 0
    t_start = time.perf_counter()
    work = args.work or args.out.with_name(f"{args.out.stem}_work")
    work.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    ablations = [] if args.ablations == "none" else [a.strip() for a in args.ablations.split(",") if a.strip()]
    references = [] if args.references == "none" else [a.strip() for a in args.references.split(",") if a.strip()]
    sweep = {"none": [], "all": SWEEP_NAMES}.get(args.sweep, [a.strip() for a in args.sweep.split(",") if a.strip()])
    unknown = ([m for m in models if m not in LONG_TERM_NAMES] + [a for a in ablations if a not in ABLATION_NAMES]
               + [a for a in references if a not in REFERENCE_NAMES] + [a for a in sweep if a not in SWEEP_NAMES])
    if unknown:
        raise SystemExit(f"unknown model, ablation, reference or sweep variant: {unknown}")
    variants = ([v for v in MODEL_VARIANTS if v.name in models] + [a for a in ABLATIONS if a.name in ablations]
                + [v for v in REFERENCES if v.name in references] + [v for v in SWEEP if v.name in sweep])
    ds = _dataset(args, work)
    split = TemporalSplit.from_fractions(ds.histories.ts)
    h = ds.histories
    users = np.arange(h.num_users, dtype=np.int64)
    # "Whole history": the longest history any test sample can have (behaviors before the test end), capped
    # by --full-cap (TWIN over 10^5 behaviors per sample is out of reach on 2 CPU cores).
    longest = int((h.end_before(users, np.full(h.num_users, split.window("test")[1], np.int64))
                   - h.offsets[:-1]).max())
    args.full_len = min(longest, args.full_cap)
    test_samples = make_samples(ds, split, "test", max_samples=args.max_test_samples, seed=0)
    test_lengths = h.end_before(test_samples.user_id, test_samples.ts) - h.offsets[test_samples.user_id]
    args.full_coverage = float((test_lengths <= args.full_len).mean())
    lo, hi = split.window("train")
    train_events = int(((h.ts >= lo) & (h.ts < hi)).sum())
    args.num_train_samples = train_events if args.max_train_samples is None else min(train_events,
                                                                                      args.max_train_samples)
    args.twinv2_cluster = _twinv2_cluster(args, ds)
    settings = _settings(args, ds)
    oracle, headroom = _oracle(ds, split, args), life_cycle_headroom(ds, *split.window("test"),
                                                                      long_len=args.long_len)
    compressed: dict[str, list[Path]] = {}
    # The offline job on a cadence: versions every (1 - snapshot) / cadence of the events from the split
    # snapshot on (default 8: every 2.5%; the 4th is the test start). Each sample, train, valid or test,
    # reads the latest version built before it, as serving would.
    snapshots = cadence_snapshots(ds.histories.ts, TrainConfig().split.snapshot, 1.0, args.cadence)
    records: list[dict[str, Any]] = []

    def clusters(v: Variant) -> list[Path] | None:
        if v.model != "twinv2":
            return None
        key = v.compress_key(args.twinv2_cluster)
        if key not in compressed:
            folders = [version_folder(work / "compressed" / key, ts) for ts in snapshots]
            # --reuse-compressed: trust finished version folders instead of rerunning the job on them (which
            # recomputes the embeddings before it finds the folder finished); training still checks each
            # folder against the dataset.
            reuse = args.finished_only or (args.reuse_compressed and all((f / "manifest.json").is_file()
                                                                          for f in folders))
            compressed[key] = folders if reuse else _compressed(ds, work, v, snapshots, args)
        return compressed[key]

    def payload_of(complete: bool) -> dict[str, Any]:
        results = aggregate(records, variants)
        _add_headroom_share(results, oracle)
        paired = paired_comparisons(records, list(results))
        targets, detail = compute_targets(results, paired, settings.get("regime"))
        return {"settings": settings, "split": split.to_dict(), "results": results, "oracle": oracle,
                "headroom": headroom, "comparison": _comparison(results), "paired": paired, "targets": targets,
                "targets_detail": detail, "runs": records, "compression_seed": 0,
                "seconds": time.perf_counter() - t_start, "complete": complete}

    def record(rec: dict[str, Any] | None) -> None:
        if rec is None:  # --finished-only: a run that has not finished is left out
            return
        records.append(rec)
        write_json_atomic(args.out, payload_of(False))

    # Runs are independent (one torch thread each, one process each), so they run --jobs at a time.
    # Variant-major, models first: an interrupted run has whole models before any sweep point.
    sweep_seeds = args.seeds if args.sweep_seeds is None else min(args.sweep_seeds, args.seeds)
    runs = [(v, s) for v in variants for s in range(sweep_seeds if v.name in SWEEP_NAMES else args.seeds)]
    comps = {v.name: clusters(v) for v, _ in runs}
    if args.jobs <= 1:
        for v, seed in runs:
            record(_run_one(ds, work, v, seed, args, comps[v.name], settings))
    else:
        with cf.ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn"), max_tasks_per_child=1) as pool:
            futures = [pool.submit(_worker, str(ds.path), v, seed, args, comps[v.name], settings, work)
                       for v, seed in runs]
            for fut in cf.as_completed(futures):
                record(fut.result())
    order = {(v.name, s): i for i, (v, s) in enumerate(runs)}
    records.sort(key=lambda r: order[(r["name"], r["seed"])])
    payload = payload_of(len(records) == len(runs))
    write_json_atomic(args.out, payload)
    table = write_outputs(args.out, payload["results"], payload)
    print(table)
    print(f"\n{args.out} ({payload['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``twinv2 demo``: the whole pipeline on synthetic life cycles, in minutes, with a report.

Stages (each one a library call, each timed and shown with a progress bar):

1. **data**: synthesise the dataset (``twinv2.data.synth``, the ``lifecycle`` regime by default: heavy users
   whose interests go dormant and come back) into ``OUT/data``; reused when a dataset of the same scale,
   seed and generator config is already there;
2. **split**: :meth:`TemporalSplit.from_fractions` at 80% / 90% / 95% of the events;
3. **embeddings + compression on a cadence**: ``twinv2.compress.cadence.compress_on_cadence`` with the
   job's training-free default embeddings (positive PMI of item co-occurrence before each snapshot,
   factorised by SVD) and the default clustering (M = 5 completion groups, gamma = 20), at
   ``budget.cadence`` snapshots from the split snapshot on, into ``OUT/compressed/snapshot-<ts>``: the
   offline job run on a schedule. Every sample, in training, validation and test, reads the latest version
   built before it, as serving would, so training sees the raw/virtual mix the test sees. Why co-occurrence
   rather than the item table of a short ``twin`` run: it costs seconds instead of a training run, needs no
   labels, and uses only pre-snapshot behaviors;
4. **train**: every requested model with the same budgets (GSU length L, ESU size k, samples, epochs):
   by default ``twinv2``, ``twin`` and ``sim_hard`` (the category filter a user would compare them with);
5. **evaluate** on the test window: AUC, GAUC, log loss, overall, per activity tertile and per headroom
   bucket (the distance to the user's previous behavior of the target's category: within 50, within L,
   beyond L, never; ``beyond_L`` holds the samples where only a life-cycle model sees category evidence),
   plus the GSU diagnostics of the two-stage models (with the ground-truth NDCG@k of the kept set beside
   ``sim_hard``'s) and the data's life-cycle headroom;
6. **report**: ``OUT/report.md`` with PNG plots in ``OUT/plots/`` and every number in ``OUT/summary.json``.

The default budget (:data:`DEFAULT_BUDGET`) is sized for well under 15 minutes on 2 CPU cores; ``--quick``
(:data:`QUICK_BUDGET`) runs the same stages on the ``small`` scale in well under a minute.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from twinv2 import __version__
from twinv2._io import write_json_atomic
from twinv2.data.headroom import SAMPLE_BUCKETS
from twinv2.data.split import TemporalSplit, make_samples
from twinv2.data.store import Dataset, load_dataset
from twinv2.errors import CompressionError, ConfigError
from twinv2.train.config import TrainConfig, apply_overrides
from twinv2.train.evaluate import ACTIVITY_GROUPS, evaluate_checkpoint
from twinv2.train.report import bar_plot, grouped_bar_plot, line_plot, markdown_table, write_text

__all__ = ["DEFAULT_BUDGET", "QUICK_BUDGET", "DemoBudget", "DemoResult", "run_demo"]

DEMO_MODELS = ("twinv2", "twin", "sim_hard")


@dataclass(frozen=True)
class DemoBudget:
    """Data scale and the training budget shared by every model of the demo.

    Attributes:
        scale: synthetic scale (``small``, ``default``, ``large``).
        long_len: GSU input length L; esu_size: ESU size k (the same for every two-stage model).
        max_train_samples: seeded subsample of the train window (None = all its events).
        max_valid_samples: validation subsample (early stopping is on its GAUC).
        max_test_samples: test subsample (None = the whole test window).
    """

    scale: str
    long_len: int
    esu_size: int
    batch_size: int
    epochs: int
    max_train_samples: int | None
    max_valid_samples: int | None
    max_test_samples: int | None
    compress_workers: int = 2
    cadence: int = 4  # compressed versions from the split snapshot on (4: every 5% of the events)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # TWIN-V2's sequence (docs/models.md, chosen on validation GAUC): at most raw_cap raw behaviors since the
    # snapshot, then virtual items of clusters split by `split_by`, at most `max_clusters` per user, so the
    # compressed life cycle fits L.
    raw_cap: int | None = None
    split_by: str | None = None
    max_clusters: int | None = None

    def cluster_config(self) -> Any:
        """The offline job's clustering for this budget (a :class:`~twinv2.compress.ClusterConfig`)."""
        from twinv2.compress.cluster import ClusterConfig  # the compiled kernels load only when compressing

        return ClusterConfig(split_by=self.split_by, max_clusters=self.max_clusters)

    def train_config(self, model: str, seed: int, device: str) -> TrainConfig:
        """The training config of ``model`` under this budget."""
        values = {"model.long_term": model, "model.esu_size": self.esu_size, "data.long_len": self.long_len,
                  "data.max_train_samples": self.max_train_samples,
                  "data.max_valid_samples": self.max_valid_samples,
                  "data.max_test_samples": self.max_test_samples, "train.batch_size": self.batch_size,
                  "train.epochs": self.epochs, "train.seed": seed, "train.device": device,
                  "train.patience": 1, "data.raw_cap": self.raw_cap}
        values.update({f"model.{k}": v for k, v in self.model_overrides.items()})
        return apply_overrides(TrainConfig(), values, source="demo budget")


# The life-cycle regime (docs/synthetic.md): the data where reading beyond the recent behaviors can pay
# (about a fifth of the test positives have their previous same-category behavior more than 500 behaviors
# back). Sized for 15 minutes on 2 CPU cores with the set-up: the four compressions of 4-5 M behaviors
# each take the largest share; one torch thread trains twin / twinv2 at L = 500 at ~2,000 samples/s on
# an idle core, so 100,000 samples take under a minute per model (sim_hard about 1.5 times faster).
DEFAULT_BUDGET = DemoBudget(scale="lifecycle", long_len=500, esu_size=100, batch_size=256, epochs=1,
                            max_train_samples=100_000, max_valid_samples=10_000, max_test_samples=50_000,
                            raw_cap=100, split_by="category_id", max_clusters=400)
QUICK_BUDGET = DemoBudget(scale="small", long_len=100, esu_size=20, batch_size=128, epochs=1,
                          max_train_samples=3_000, max_valid_samples=1_000, max_test_samples=3_000,
                          compress_workers=1, raw_cap=20, split_by="category_id", max_clusters=80,
                          model_overrides={"id_dim": 16, "num_heads": 2, "head_dim": 8, "mlp_dims": (32,)})


@dataclass
class DemoResult:
    """What the demo produced: the report, the summary table it printed, and every number."""

    out: Path
    report_path: Path
    summary_path: Path
    summary_table: Table
    results: dict[str, Any]


def _stage(console: Console, index: int, total: int, title: str) -> float:
    console.rule(f"[bold]{index}/{total}  {title}", align="left")
    return time.perf_counter()


def _synth_matches(path: Path, scale: str, seed: int) -> bool:
    """True when ``path`` holds a finished synthetic dataset of this scale, seed and generator config."""
    from twinv2.data.schema import Manifest
    from twinv2.data.synth import config_for_scale

    try:
        notes = Manifest.load(path).notes
    except Exception:  # absent or unreadable: regenerate
        return False
    expected = json.loads(json.dumps(dataclasses.asdict(config_for_scale(scale))))
    return (notes.get("generator") == "twinv2.data.synth" and notes.get("scale") == scale
            and notes.get("seed") == seed and notes.get("config") == expected)


def _coverage(ds: Dataset, comp: Any | None, samples: Any, long_len: int,
              raw_cap: int | None = None) -> dict[str, float]:
    """How much of each test sample's history the long sequence represents, for raw-L models and twinv2.

    raw: ``min(n, L) / n``; twinv2 (clusters of ``comp``, the version serving the test window): (raw
    behaviors after the snapshot that fit, at most ``raw_cap`` + members of the most recent clusters that
    fit) / n, where n = behaviors before the sample. Means over samples with n > 0.
    """
    h = ds.histories
    users = samples.user_id
    lo = h.offsets[users]
    end = h.end_before(users, samples.ts)
    n = (end - lo).astype(np.float64)
    keep = n > 0
    raw_cov = np.minimum(n, long_len) / np.maximum(n, 1)
    stats = {
        "samples_with_history_over_L": float((n[keep] > long_len).mean()),
        "raw_history_coverage": float(raw_cov[keep].mean()),
        "median_history_length": float(np.median(n[keep])),
        "p90_history_length": float(np.quantile(n[keep], 0.9)),
        "max_history_length": float(n[keep].max()),
    }
    if comp is None:
        return stats
    snap_end = h.end_before(users, np.full(len(users), comp.snapshot_ts))
    num_raw = np.minimum(end - np.maximum(lo, snap_end), long_len if raw_cap is None else min(raw_cap, long_len))
    c_lo, c_hi = comp.offsets[users], comp.offsets[users + 1]
    fit = np.minimum(c_hi - c_lo, long_len - num_raw)
    csum = np.concatenate([[0], np.cumsum(comp.cluster_size)])
    members = csum[c_hi] - csum[c_hi - fit]  # the most recent `fit` clusters sit at the end of the CSR row
    v2_cov = np.minimum((num_raw + members) / np.maximum(n, 1), 1.0)
    stats["twinv2_history_coverage"] = float(v2_cov[keep].mean())
    return stats


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc).strftime("%Y-%m-%d %H:%M")


def run_demo(out: str | os.PathLike = "runs/demo", *, models: list[str] | tuple[str, ...] | None = DEMO_MODELS,
             scale: str | None = None,
             seed: int = 0, quick: bool = False, device: str = "auto", console: Console | None = None,
             budget: DemoBudget | None = None) -> DemoResult:
    """Run the demo end to end and write ``OUT/report.md``.

    Args:
        out: run folder (created; a dataset of the same scale and seed inside it is reused).
        models: long-term modules to train (default :data:`DEMO_MODELS`: twinv2, twin, sim_hard; ``None``
            from ``--all-models`` means every model).
        scale: synthetic scale (default: the budget's, ``default``; ``small`` with ``quick``).
        quick: the small budget (:data:`QUICK_BUDGET`).
        budget: explicit budget (overrides ``quick``).
    """
    from twinv2.compress import load_compressed
    from twinv2.compress.cadence import cadence_snapshots, compress_on_cadence
    from twinv2.data.headroom import life_cycle_headroom
    from twinv2.data.synth import synthesize
    from twinv2.models import LONG_TERM_MODULES, LONG_TERM_NAMES
    from twinv2.train._runtime import available_cores, resolve_device
    from twinv2.train.loop import train_model

    t_start = time.perf_counter()
    console = console or Console(stderr=True)
    device = str(resolve_device(device))
    out = Path(out)
    budget = budget or (QUICK_BUDGET if quick else DEFAULT_BUDGET)
    if scale is not None and scale != budget.scale:
        budget = dataclasses.replace(budget, scale=scale)
    models = list(LONG_TERM_NAMES) if models is None else list(models)
    unknown = [m for m in models if m not in LONG_TERM_NAMES]
    if unknown or not models:
        raise ConfigError(f"--models: unknown model {unknown[0] if unknown else '(none given)'}; valid names: "
                          f"{', '.join(LONG_TERM_NAMES)}")
    workers = max(1, min(budget.compress_workers, available_cores()))
    total = 6
    timings: dict[str, float] = {}

    # 1. data ---------------------------------------------------------------------------------------------
    t = _stage(console, 1, total, f"dataset: synthetic '{budget.scale}' scale, seed {seed}")
    data_dir = out / "data"
    if _synth_matches(data_dir, budget.scale, seed):
        console.print(f"reusing {data_dir}")
    else:
        synthesize(data_dir, scale=budget.scale, seed=seed, progress=True)
    ds = load_dataset(data_dir)
    timings["data"] = time.perf_counter() - t

    # 2. split --------------------------------------------------------------------------------------------
    t = _stage(console, 2, total, "temporal split")
    base_cfg = budget.train_config(models[0], seed, device)
    split = TemporalSplit.from_fractions(ds.histories.ts, snapshot=base_cfg.split.snapshot,
                                         valid=base_cfg.split.valid, test=base_cfg.split.test)
    windows = {name: split.window(name) for name in ("train", "valid", "test")}
    window_events = {name: int(((ds.histories.ts >= lo) & (ds.histories.ts < hi)).sum())
                     for name, (lo, hi) in windows.items()}
    console.print(f"snapshot {_iso(split.snapshot_ts)}; events per window: {window_events}", highlight=False)
    timings["split"] = time.perf_counter() - t

    # 3. embeddings + compression ----------------------------------------------------------------------------
    t = _stage(console, 3, total, "item embeddings (co-occurrence) + life-cycle compression on a cadence")
    comp_root = out / "compressed"
    snapshots = cadence_snapshots(ds.histories.ts, base_cfg.split.snapshot, 1.0, budget.cadence)

    def compress(overwrite: bool) -> list[Path]:
        return compress_on_cadence(data_dir, comp_root, snapshots, workers=workers, seed=seed, progress=True,
                                   overwrite=overwrite, config=budget.cluster_config())

    needs_clusters = any(LONG_TERM_MODULES[m].long_source == "compressed" for m in models)
    versions: list[Path] = []
    serving = None  # the version that serves the test window
    if not needs_clusters:
        console.print("no model of this run reads compressed life cycles: nothing to compress")
    else:
        try:
            versions = compress(overwrite=False)
        except CompressionError:
            # A previous demo run with other parameters (scale, seed): start those folders over.
            versions = compress(overwrite=True)
        for folder in versions:
            c = load_compressed(folder)
            console.print(f"snapshot {_iso(c.snapshot_ts)}: {c.manifest['num_behaviors']:,} behaviors -> "
                          f"{c.manifest['num_clusters']:,} virtual items "
                          f"({c.manifest['num_clusters'] / max(c.manifest['num_behaviors'], 1):.1%})", highlight=False)
            if c.snapshot_ts <= split.test_start_ts:
                serving = c
    timings["compression"] = time.perf_counter() - t

    # 4. train ----------------------------------------------------------------------------------------------
    t = _stage(console, 4, total, f"train {', '.join(models)} (L={budget.long_len}, k={budget.esu_size})")
    runs: dict[str, Any] = {}
    train_times: dict[str, float] = {}
    for name in models:
        t_model = time.perf_counter()
        cfg = budget.train_config(name, seed, device)
        reads_clusters = LONG_TERM_MODULES[name].long_source == "compressed"
        runs[name] = train_model(ds, out / "models" / name, cfg, compressed=versions if reads_clusters else None,
                                 overwrite=True, console=console)
        train_times[name] = time.perf_counter() - t_model
    timings["train"] = time.perf_counter() - t

    # 5. evaluate -------------------------------------------------------------------------------------------
    t = _stage(console, 5, total, "evaluate on the test window")
    reports = {name: evaluate_checkpoint(
        runs[name].best_checkpoint, "test", dataset=ds, device=device, console=console, diagnostics=True,
        compressed=versions if LONG_TERM_MODULES[name].long_source == "compressed" else None)
        for name in models}
    test_samples = make_samples(ds, split, "test", max_samples=budget.max_test_samples, seed=0)
    coverage = _coverage(ds, serving, test_samples, budget.long_len, base_cfg.data.raw_cap)
    headroom = life_cycle_headroom(ds, *split.window("test"), long_len=budget.long_len)
    timings["evaluate"] = time.perf_counter() - t

    # 6. report ---------------------------------------------------------------------------------------------
    t = _stage(console, 6, total, "report")
    results = {
        "twinv2_version": __version__, "seed": seed, "device": str(device), "budget": dataclasses.asdict(budget),
        "optim": dataclasses.asdict(base_cfg.optim),
        "dataset": {"path": str(data_dir), "num_users": ds.manifest.num_users, "num_items": ds.manifest.num_items,
                    "num_events": ds.manifest.num_events, "label_rate": ds.manifest.notes.get("label_rate"),
                    "max_user_events": ds.manifest.notes.get("max_user_events")},
        "split": {**split.to_dict(), "window_events": window_events},
        "split_fractions": dataclasses.asdict(base_cfg.split),
        "compression": None if not versions else {
            "root": str(comp_root), "versions": [
                {"path": str(f), "snapshot_ts": (c := load_compressed(f)).snapshot_ts,
                 "num_behaviors": c.manifest["num_behaviors"], "num_clusters": c.manifest["num_clusters"]}
                for f in versions],
            "embeddings": serving.manifest.get("embeddings") if serving else None,
            "cluster_config": serving.manifest.get("cluster_config") if serving else None,
            "raw_cap": base_cfg.data.raw_cap},
        "headroom": headroom,
        "coverage": coverage,
        "models": {name: {"test": reports[name], "validation": runs[name].best,
                          "train_samples": runs[name].num_train_samples, "steps": runs[name].steps,
                          "train_seconds": runs[name].train_seconds,
                          "samples_per_second": runs[name].samples_per_second,
                          "wall_seconds": train_times[name], "checkpoint": str(runs[name].best_checkpoint),
                          "loss_curve": runs[name].loss_curve}
                   for name in models},
        "timings": timings,
    }
    plots = _plots(out / "plots", results, models)
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    report_path = write_text(out / "report.md", _report_markdown(results, plots, out))
    summary_path = out / "summary.json"
    write_json_atomic(summary_path, results)
    return DemoResult(out=out, report_path=report_path, summary_path=summary_path,
                      summary_table=_summary_table(results, models), results=results)


def _plots(folder: Path, results: dict[str, Any], models: list[str]) -> dict[str, Path]:
    tests = {m: results["models"][m]["test"] for m in models}
    plots = {
        "gauc_by_model": bar_plot(folder / "gauc_by_model.png", models, [tests[m]["gauc"] for m in models],
                                  ylabel="test GAUC", title="Test GAUC by model (one seed)", highlight="twinv2"),
        "gauc_by_group": grouped_bar_plot(
            folder / "gauc_by_group.png", models, [f"{g} activity" for g in ACTIVITY_GROUPS],
            [[tests[m]["groups"][g]["gauc"] for g in ACTIVITY_GROUPS] for m in models],
            ylabel="test GAUC", title="Test GAUC by user-activity tertile"),
        "loss_curves": line_plot(
            folder / "loss_curves.png",
            {m: ([p[0] for p in results["models"][m]["loss_curve"]], [p[1] for p in results["models"][m]["loss_curve"]])
             for m in models}, xlabel="training step", ylabel="running log loss", title="Training loss"),
    }
    if all(tests[m].get("buckets") for m in models):
        plots["gauc_by_bucket"] = grouped_bar_plot(
            folder / "gauc_by_bucket.png", models, list(SAMPLE_BUCKETS),
            [[tests[m]["buckets"][b]["gauc"] for b in SAMPLE_BUCKETS] for m in models],
            ylabel="test GAUC", title="Test GAUC by headroom bucket (previous same-category behavior)")
    return plots


def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"


def _summary_table(results: dict[str, Any], models: list[str]) -> Table:
    table = Table(title="twinv2 demo: test window")
    for col in ("model", "AUC", "GAUC", "log loss", "GAUC high-activity", "GAUC beyond L", "GSU category recall",
                "GT NDCG@k", "train samples/s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for m in models:
        r = results["models"][m]
        t = r["test"]
        diag = t.get("diagnostics", {})
        beyond = (t.get("buckets") or {}).get("beyond_L", {})
        table.add_row(m, _fmt(t["auc"]), _fmt(t["gauc"]), _fmt(t["logloss"]), _fmt(t["groups"]["high"]["gauc"]),
                      _fmt(beyond.get("gauc")),
                      _fmt(diag.get("category_recall"), 3) if diag.get("learned_gsu") else "n/a",
                      _fmt(diag.get("gt_ndcg"), 3), f"{r['samples_per_second']:.0f}")
    h = results.get("headroom", {})
    if h.get("shares"):
        table.caption = (f"life-cycle headroom: {h['shares']['beyond_L']:.1%} of test clicks have their previous "
                         f"same-category behavior beyond L = {h['long_len']}")
    return table


def _compression_lines(results: dict[str, Any]) -> list[str]:
    """Items 3 and 4 of the report's "What was run" list (absent when no model reads clusters)."""
    c = results["compression"]
    if c is None:
        return ["3. **Embeddings and compression**: skipped (no model of this run reads compressed life cycles)."]
    versions = "; ".join(f"{_iso(v['snapshot_ts'])}: {v['num_behaviors']:,} -> {v['num_clusters']:,}"
                         for v in c["versions"])
    cap = "no cap" if c["raw_cap"] is None else f"at most {c['raw_cap']}"
    return [
        f"3. **Item embeddings**: {c['embeddings']} — training-free co-occurrence embeddings from pre-snapshot "
        "behaviors (seconds, no labels).",
        f"4. **Compression on a cadence**: clustering config {c['cluster_config']}; the offline job runs "
        f"{len(c['versions'])} times, every {1 - results['split_fractions']['snapshot']:.0%} / "
        f"{len(c['versions'])} of the events from the split snapshot on (behaviors -> virtual items: {versions}). "
        "Every sample, in training, validation and test, reads the latest version built before it, as serving "
        f"would: the raw behaviors since that version's snapshot ({cap}), then its virtual items.",
    ]


def _diagnostics_lines(results: dict[str, Any], models: list[str]) -> list[str]:
    """The headroom statistic and the GSU diagnostics, beside the scores."""
    h = results["headroom"]
    lines = ["## Where the life cycle can pay", ""]
    if h.get("shares"):
        sh = h["shares"]
        lines += [
            f"Life-cycle headroom of the test window (`twinv2 data describe --headroom-len {h['long_len']}`): of "
            f"{h['positives']:,} clicks, the user's previous behavior of the clicked item's category lies within "
            f"the last 50 behaviors for {sh['within_50']:.1%}, within L = {h['long_len']} for {sh['within_L']:.1%}, "
            f"beyond L for {sh['beyond_L']:.1%} (beyond 10 L: {sh['beyond_10L']:.1%}); {sh['never']:.1%} have "
            "none. Only the beyond-L share is out of reach of a model reading the L most recent behaviors.", ""]
    tests = {m: results["models"][m]["test"] for m in models}
    if all(tests[m].get("buckets") for m in models):
        first = tests[models[0]]
        bounds = first["bucket_definition"]["bounds"]
        rows = [[b, bounds[b], f"{first['buckets'][b]['num_samples']:,}"]
                + [f"{_fmt(tests[m]['buckets'][b]['auc'])} / {_fmt(tests[m]['buckets'][b]['gauc'])}" for m in models]
                for b in SAMPLE_BUCKETS]
        lines += [
            "**Per headroom bucket** (every test sample, clicked or not, by how many behaviors back the user's "
            "previous behavior of the target's category lies; AUC / GAUC): `beyond_L` holds the samples where "
            "only a life-cycle model sees category evidence, so twinv2's gain, or its absence, shows there.",
            "",
            markdown_table(["bucket", "behaviors back", "samples"] + [f"{m} AUC / GAUC" for m in models], rows,
                           align="llr" + "r" * len(models)), ""]
    learned = [m for m in models if tests[m].get("diagnostics", {}).get("learned_gsu")]
    if learned:
        rows = []
        for m in learned:
            d = tests[m]["diagnostics"]
            rows.append([m, _fmt(d["category_hit_rate"], 3), _fmt(d["category_share_in_long"], 3),
                         _fmt(d["category_recall"], 3), _fmt(d["relevance_abs"], 2), _fmt(d["cross_bias_abs"], 2),
                         _fmt(d.get("match_abs"), 2), _fmt(d["log_size_abs"], 2), _fmt(d["virtual_share"], 3),
                         _fmt(d["selected_age_days_median"], 1), _fmt(d.get("esu_weight_same_category"), 3),
                         _fmt(d.get("esu_weight_same_category_uniform"), 3),
                         _fmt(d.get("beyond_L_virtual_kept_share"), 3),
                         _fmt(d.get("beyond_L_esu_weight_same_category"), 3)])
        lines += [
            "GSU diagnostics on the test samples (`twinv2 evaluate --diagnostics`): the share of the k kept "
            "behaviors that have the target's category (hit rate) beside that share over all L, the share of the "
            "target-category behaviors within L that the GSU keeps (recall, up to k; a category filter keeps all), "
            "the mean size of the score's terms over the kept, the share of virtual items kept and their median "
            "age; the ESU's attention on the kept of the target's category (samples with any; beside what a "
            "uniform ESU would give); for the beyond-L samples, the share where the GSU kept a virtual item of the "
            "target's category and the ESU weight it got (n/a for raw sequences, which hold none).",
            "",
            markdown_table(["model", "hit rate", "share in L", "recall", "|relevance|", "|cross bias|", "|match|",
                            "ln n", "virtual share", "median age (days)", "ESU weight on category",
                            "if uniform", "beyond L: virtual kept", "beyond L: ESU weight"], rows), ""]
    gt = [m for m in models if tests[m].get("diagnostics", {}).get("gt_ndcg") is not None]
    if gt:
        d0 = tests[gt[0]]["diagnostics"]
        rows = [[m, _fmt(tests[m]["diagnostics"]["gt_ndcg"], 3), _fmt(tests[m]["diagnostics"]["gt_gain_share"], 3),
                 _fmt(tests[m]["diagnostics"]["gt_dcg"], 2), _fmt(tests[m]["diagnostics"]["gt_ndcg_sim_hard"], 3),
                 _fmt(tests[m]["diagnostics"]["gt_ndcg_recent"], 3)] for m in gt]
        lines += [
            f"**Ground-truth retrieval quality** (synthetic data): NDCG@k of the kept set in the GSU's order, "
            f"true relevance = {d0['gt_relevance']}; the ideal is the k most relevant items of the model's own "
            "sequence (twinv2's holds virtual items of the whole life cycle), so DCG@k (absolute) compares the "
            "kept sets across models; sim_hard's selection and the k most recent raw behaviors on the same samples "
            "beside it.",
            "",
            markdown_table(["model", "NDCG@k", "gain share (order-free)", "DCG@k", "sim_hard NDCG@k",
                            "k most recent NDCG@k"], rows), ""]
    return lines


def _report_markdown(results: dict[str, Any], plots: dict[str, Path], out: Path) -> str:
    models = list(results["models"])
    b = results["budget"]
    d = results["dataset"]
    s = results["split"]
    cov = results["coverage"]
    tm = results["timings"]
    rel = {k: os.path.relpath(p, out) for k, p in plots.items()}
    first_run = results["models"][models[0]]
    first_cfg = results["optim"]
    lines = [
        "# twinv2 demo report",
        "",
        f"`twinv2 demo` (twinv2 {results['twinv2_version']}), seed {results['seed']}, device "
        f"{results['device']}; total time {tm.get('total', sum(tm.values())) / 60:.1f} min.",
        "",
        "## Results on the test window",
        "",
        markdown_table(
            ["model", "AUC", "GAUC", "GAUC users / impressions", "log loss", "best valid GAUC", "train samples/s",
             "train time"],
            [[m, _fmt(r["test"]["auc"]), _fmt(r["test"]["gauc"]),
              f"{r['test']['gauc_users']} / {r['test']['gauc_impressions']}", _fmt(r["test"]["logloss"]),
              _fmt(r["validation"].get("gauc")), f"{r['samples_per_second']:.0f}",
              f"{r['wall_seconds']:.0f} s"] for m, r in results["models"].items()]),
        "",
    ]
    pairs = [(one, other) for one, other in (("twinv2", "twin"), ("twinv2", "sim_hard"), ("twin", "sim_hard"))
             if one in models and other in models]
    if pairs:
        diffs = []
        for one, other in pairs:
            x, y = results["models"][one]["test"], results["models"][other]["test"]
            beyond = ""
            if x.get("buckets") and y.get("buckets"):
                beyond = f", beyond-L GAUC {x['buckets']['beyond_L']['gauc'] - y['buckets']['beyond_L']['gauc']:+.4f}"
            diffs.append(f"{one} - {other}: GAUC {x['gauc'] - y['gauc']:+.4f}, AUC {x['auc'] - y['auc']:+.4f}, "
                         f"log loss {x['logloss'] - y['logloss']:+.4f}{beyond}")
        lines += ["; ".join(diffs) + ". This is one seed: differences of a few 0.001 are within seed noise; "
                  "`benchmarks/quality.py` compares models paired over seeds on the whole test window (see "
                  "benchmarks/RESULTS.md).", ""]
    lines += _diagnostics_lines(results, models)
    lines += [
        f"![GAUC by model]({rel['gauc_by_model']})",
        "",
        "## By user activity",
        "",
        "Users of the test window are split into tertiles of their history length before the window "
        "(thresholds over distinct users; see `twinv2.train.evaluate`).",
        "",
    ]
    first = results["models"][models[0]]["test"]
    rows = []
    for g in ACTIVITY_GROUPS:
        gb = first["groups"][g]
        rows.append([g, f"{gb['history_length_min']}-{gb['history_length_max']}", gb["num_users"], gb["num_samples"]]
                    + [_fmt(results["models"][m]["test"]["groups"][g]["gauc"]) for m in models])
    lines += [markdown_table(["activity", "history length", "users", "samples"] + [f"GAUC {m}" for m in models],
                             rows), "", f"![GAUC by activity group]({rel['gauc_by_group']})", ""]
    if "gauc_by_bucket" in rel:
        lines += [f"![GAUC by headroom bucket]({rel['gauc_by_bucket']})", ""]
    lines += [
        "## What was run",
        "",
        f"1. **Data**: synthetic life cycles, scale `{b['scale']}` (`twinv2 data synth --scale {b['scale']}`): "
        f"{d['num_users']:,} users, {d['num_items']:,} items, {d['num_events']:,} events, label rate "
        f"{d['label_rate']}, heaviest user {d['max_user_events']:,} events.",
        f"2. **Split** (event-count fractions 80 / 90 / 95%): history before {_iso(s['snapshot_ts'])} (the "
        f"compression snapshot), train until {_iso(s['valid_start_ts'])}, valid until {_iso(s['test_start_ts'])}, "
        f"test until {_iso(s['end_ts'])}; events per window: {s['window_events']}.",
        *_compression_lines(results),
        f"5. **Training**: equal budgets for every model: GSU length L = {b['long_len']}, ESU size k = "
        f"{b['esu_size']}, batch {b['batch_size']}, {b['epochs']} epoch(s) over "
        + (f"all {first_run['train_samples']:,} events of the train window" if b["max_train_samples"] is None
           else f"a seeded subsample of {first_run['train_samples']:,} train events")
        + f", best checkpoint by the GAUC of {b['max_valid_samples'] or 'all'} validation samples; Adagrad "
        f"(lr {first_cfg['embedding_lr']}) for embeddings, Adam (lr {first_cfg['dense_lr']}) for dense layers.",
        "",
        "**What the long sequence covers** (test samples; n = behaviors before the sample): median n "
        f"{cov['median_history_length']:.0f}, p90 {cov['p90_history_length']:.0f}, max "
        f"{cov['max_history_length']:.0f}; "
        f"{cov['samples_with_history_over_L']:.1%} of samples have n > L. The L most recent raw behaviors "
        f"cover {cov['raw_history_coverage']:.1%} of a sample's history on average"
        + ("." if "twinv2_history_coverage" not in cov else
           f"; twinv2's L items (raw behaviors since the serving version's snapshot, then virtual items) represent "
           f"{cov['twinv2_history_coverage']:.1%}."),
        "",
        f"![training loss]({rel['loss_curves']})",
        "",
        "## Time per stage",
        "",
        markdown_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in tm.items()]),
        "",
        "## Reproduce",
        "",
        "```",
        f"twinv2 demo --out {out} --seed {results['seed']} --models {','.join(models)}",
        *([f"twinv2 evaluate --checkpoint {out}/models/twinv2/best.pt --split test --diagnostics"]
          if "twinv2" in models else []),
        "```",
        "",
        "All numbers are in `summary.json`; each model's run folder (`models/NAME/`) holds its checkpoints, "
        "resolved config and validation history.",
        "",
    ]
    return "\n".join(lines)

"""The ``twinv2`` command line: thin typer wrappers over library functions.

Each command parses options, calls one library function, and prints a short summary. Library errors
(:class:`twinv2.errors.Twinv2Error`) become a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from twinv2.errors import Twinv2Error

app = typer.Typer(help="Life-cycle user behavior modeling for CTR prediction (TWIN-V2).", no_args_is_help=True,
                  pretty_exceptions_enable=False)
data_app = typer.Typer(help="Create, import and describe datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console(stderr=True)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors into a one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (Twinv2Error, FileNotFoundError, FileExistsError) as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from exc

    return wrapper


def print_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=float) + "\n")


# ---- data ------------------------------------------------------------------------------------------


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Path = typer.Option(..., "--out", help="Dataset folder to write (an existing dataset folder is replaced)."),
    users: int | None = typer.Option(None, "--users", help="Number of users (default: the scale's preset)."),
    scale: str = typer.Option("default", "--scale", help="Preset size: small, default or large."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed gives the same dataset."),
    max_events: int | None = typer.Option(None, "--max-events",
                                          help="Per-user cap; the heaviest user gets exactly this many events."),
) -> None:
    """Generate a synthetic life-cycle dataset (see docs/synthetic.md for the generative model)."""
    import resource
    import time

    from twinv2.data.synth import synthesize

    t0 = time.perf_counter()
    m = synthesize(out, users=users, scale=scale, seed=seed, max_events=max_events, progress=True)
    seconds = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    typer.echo(f"wrote {out}: {m.num_users:,} users, {m.num_items:,} items, {m.num_events:,} events, "
               f"max history {m.notes['max_user_events']:,}, label rate {m.notes['label_rate']:.3f}, "
               f"{seconds:.1f} s, peak memory {peak_mib:,.0f} MiB")


@data_app.command("describe")
@friendly_errors
def data_describe(
    dataset: Path = typer.Argument(..., help="Dataset folder."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    plot: Path | None = typer.Option(None, help="Where to write the history-length histogram PNG "
                                                "(default: DATASET/history_lengths.png)."),
) -> None:
    """Users, items, events, label rate, time range and history-length percentiles of a dataset."""
    from twinv2.data.describe import describe_dataset, render_description

    summary = describe_dataset(dataset, plot_path=plot)
    if as_json:
        print_json(summary)
    else:
        Console().print(render_description(summary))


import_app = typer.Typer(help="Import real data (MovieLens, Taobao, KuaiRand, any CSV/Parquet); see "
                         "docs/importers.md.", no_args_is_help=True)
data_app.add_typer(import_app, name="import")
_OUT_HELP = "Dataset folder to write (atomically: a failed import leaves none)."
_SKIP_HELP = "Drop malformed or invalid rows and report how many, instead of stopping at the first."
_OVERWRITE_HELP = "Replace --out if it is an existing dataset folder."


def _import_done(report: Any) -> None:
    console.print(report.summary(), highlight=False, soft_wrap=True)
    for reason, info in report.bad_rows["by_reason"].items():
        console.print(f"  skipped {info['count']}: {reason} (first: {info['first']})", highlight=False,
                      soft_wrap=True)
    for warning in report.warnings:
        console.print(f"  note: {warning}", highlight=False, soft_wrap=True)


@import_app.command("movielens")
@friendly_errors
def data_import_movielens(
    src: Path = typer.Argument(..., help="MovieLens folder: ratings.csv (+movies.csv), u.data (+u.item) or "
                               "ratings.dat (+movies.dat)."),
    out: Path = typer.Option(..., "--out", help=_OUT_HELP),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help=_SKIP_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
) -> None:
    """Import MovieLens ratings (label = rating >= 4; completion ratio = rating / 5)."""
    from twinv2.data.importers import import_movielens

    _import_done(import_movielens(src, out, skip_bad_rows=skip_bad_rows, overwrite=overwrite, progress=True))


@import_app.command("taobao")
@friendly_errors
def data_import_taobao(
    src: Path = typer.Argument(..., help="UserBehavior.csv, or a folder holding it."),
    out: Path = typer.Option(..., "--out", help=_OUT_HELP),
    positive: str = typer.Option("buy,cart,fav", "--positive", help="Comma-separated behaviors labelled 1."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help=_SKIP_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
) -> None:
    """Import Taobao UserBehavior (label = buy/cart/fav; completion ratio = engagement level)."""
    from twinv2.data.importers import import_taobao

    behaviors = [b.strip() for b in positive.split(",") if b.strip()]
    _import_done(import_taobao(src, out, positive_behaviors=behaviors, skip_bad_rows=skip_bad_rows,
                               overwrite=overwrite, progress=True))


@import_app.command("kuairand")
@friendly_errors
def data_import_kuairand(
    src: Path = typer.Argument(..., help="A KuaiRand log_*.csv file, or the data folder holding them."),
    out: Path = typer.Option(..., "--out", help=_OUT_HELP),
    video_features: Path | None = typer.Option(None, "--video-features", help="video_features_basic*.csv "
                                               "(default: the one in SRC when SRC is a folder)."),
    include_random: bool = typer.Option(True, "--include-random/--exclude-random",
                                        help="Keep or drop the random-exposure rows (is_rand = 1)."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help=_SKIP_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
) -> None:
    """Import KuaiRand logs (label = is_click; completion ratio = play_time_ms / duration_ms)."""
    from twinv2.data.importers import import_kuairand

    _import_done(import_kuairand(src, out, video_features=video_features, include_random=include_random,
                                 skip_bad_rows=skip_bad_rows, overwrite=overwrite, progress=True))


@import_app.command("csv")
@friendly_errors
def data_import_csv(
    src: Path = typer.Argument(..., help="Event file: CSV/TSV with a header line, or Parquet (.parquet/.pq)."),
    out: Path = typer.Option(..., "--out", help=_OUT_HELP),
    mapping: Path | None = typer.Option(None, "--mapping", help="YAML column mapping (options below win)."),
    user_col: str | None = typer.Option(None, "--user-col", help="Column of user ids."),
    item_col: str | None = typer.Option(None, "--item-col", help="Column of item ids."),
    ts_col: str | None = typer.Option(None, "--ts-col", help="Column of timestamps."),
    label_col: str | None = typer.Option(None, "--label-col", help="Column of 0/1 labels (or see "
                                         "--label-threshold)."),
    play_time_col: str | None = typer.Option(None, "--play-time-col", help="Column of play times."),
    duration_col: str | None = typer.Option(None, "--duration-col", help="Column of item durations (same unit "
                                            "as play time)."),
    completion_col: str | None = typer.Option(None, "--completion-col", help="Column of completion ratios."),
    category_col: str | None = typer.Option(None, "--category-col", help="Item category -> category_id."),
    author_col: str | None = typer.Option(None, "--author-col", help="Item author -> author_id."),
    item_cat_col: list[str] = typer.Option([], "--item-cat-col", help="More item categoricals (repeatable)."),
    cross_col: list[str] = typer.Option([], "--cross-col", help="More per-event numerics (repeatable)."),
    ts_unit: str | None = typer.Option(None, "--ts-unit", help="s (integer seconds, default), ms or iso."),
    label_threshold: float | None = typer.Option(None, "--label-threshold",
                                                 help="label = value >= this (e.g. 4 for ratings)."),
    delimiter: str | None = typer.Option(None, "--delimiter", help="Field separator (default: tab for .tsv, "
                                         "else comma; 'tab' for tab)."),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help=_SKIP_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=_OVERWRITE_HELP),
) -> None:
    """Import any CSV/TSV/Parquet event log with a column mapping given by options or --mapping."""
    from twinv2.data.importers import import_csv, load_mapping, make_mapping

    options = {"user_col": user_col, "item_col": item_col, "ts_col": ts_col, "label_col": label_col,
               "play_time_col": play_time_col, "duration_col": duration_col, "completion_col": completion_col,
               "category_col": category_col, "author_col": author_col, "item_categorical_cols": item_cat_col,
               "cross_numeric_cols": cross_col, "ts_unit": ts_unit, "label_threshold": label_threshold,
               "delimiter": delimiter}
    from_file = load_mapping(mapping) if mapping is not None else None
    column_map = make_mapping(from_file, options, file=str(mapping) if mapping is not None else "options")
    _import_done(import_csv(src, out, column_map, skip_bad_rows=skip_bad_rows, overwrite=overwrite,
                            progress=True))


# ---- training and evaluation ------------------------------------------------------------------------


@app.command("train")
@friendly_errors
def train_cmd(
    dataset: Path | None = typer.Option(None, "--dataset", help="Dataset folder (default with --resume: the "
                                        "one the run was started on)."),
    model: str | None = typer.Option(None, "--model", help="Long-term module: twinv2, twin, sim_soft, "
                                     "sim_hard, eta, sdim, din, avg_pool."),
    out: Path = typer.Option(..., "--out", help="Run folder: best.pt, last.pt, history.json, config.yaml."),
    compressed: Path | None = typer.Option(None, "--compressed", help="Compressed life cycles (required by "
                                           "twinv2; made by `twinv2 compress`)."),
    config: Path | None = typer.Option(None, "--config", help="YAML config (see configs/default.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override one config value, e.g. --set "
                                   "model.esu_size=50 (repeatable; applied last)."),
    epochs: int | None = typer.Option(None, help="train.epochs"),
    batch_size: int | None = typer.Option(None, help="train.batch_size"),
    long_len: int | None = typer.Option(None, help="data.long_len: GSU input length L"),
    esu_size: int | None = typer.Option(None, help="model.esu_size: ESU size k"),
    max_train_samples: int | None = typer.Option(None, help="data.max_train_samples"),
    seed: int | None = typer.Option(None, help="train.seed"),
    device: str | None = typer.Option(None, help="train.device: auto (CUDA when present), cpu or cuda"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in an --out that holds a run."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
) -> None:
    """Train a CTR model with early stopping on validation GAUC; writes best and last checkpoints."""
    from twinv2.train.loop import run_training

    options = {"train.epochs": epochs, "train.batch_size": batch_size, "data.long_len": long_len,
               "model.esu_size": esu_size, "data.max_train_samples": max_train_samples, "train.seed": seed,
               "train.device": device}
    result = run_training(out, dataset=dataset, model=model, compressed=compressed, config_file=config,
                          overrides=set_, options=options, resume=resume, overwrite=overwrite, console=console)
    summary = {"best_checkpoint": str(result.best_checkpoint), "last_checkpoint": str(result.last_checkpoint),
               "best_validation": result.best, "steps": result.steps, "stopped_early": result.stopped_early,
               "train_samples": result.num_train_samples, "train_seconds": round(result.train_seconds, 2),
               "samples_per_second": round(result.samples_per_second, 1)}
    if as_json:
        print_json(summary)
    else:
        b = result.best
        console.print(f"done: {result.steps} steps, {result.samples_per_second:.0f} samples/s; best validation "
                      f"GAUC {b.get('gauc', float('nan')):.4f} AUC {b.get('auc', float('nan')):.4f} at step "
                      f"{b.get('step')}; checkpoint {result.best_checkpoint}", highlight=False)


@app.command("evaluate")
@friendly_errors
def evaluate_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by `twinv2 train`."),
    split: str = typer.Option("test", "--split", help="train, valid or test (windows of the run's split)."),
    dataset: Path | None = typer.Option(None, "--dataset", help="Dataset folder (default: the training one)."),
    compressed: Path | None = typer.Option(None, "--compressed", help="Compressed life cycles for twinv2 "
                                           "(default: the training one)."),
    max_samples: int | None = typer.Option(None, help="Seeded subsample of the window (default: all)."),
    batch_size: int | None = typer.Option(None, help="Evaluation batch size (default: the run's)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """AUC, GAUC (with users/impressions counted) and log loss, overall and per user-activity tertile."""
    from twinv2.train.evaluate import evaluate_checkpoint, render_evaluation

    report = evaluate_checkpoint(checkpoint, split, dataset=dataset, compressed=compressed,
                                 max_samples=max_samples, batch_size=batch_size, device=device,
                                 console=console, show_progress=not as_json)
    if as_json:
        print_json(report)
    else:
        Console().print(render_evaluation(report))


@app.command("export-embeddings")
@friendly_errors
def export_embeddings_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by `twinv2 train`."),
    out: Path = typer.Option(..., "--out", help="Embedding file to write (the format `twinv2 compress` reads)."),
) -> None:
    """Write a checkpoint's item embedding table as an embedding file for the compression job."""
    from twinv2.train.evaluate import export_embeddings

    path = export_embeddings(checkpoint, out)
    console.print(f"wrote {path}", highlight=False)


@app.command("demo")
@friendly_errors
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (dataset, compressed, models, report)."),
    models: str = typer.Option("twinv2,twin", "--models", help="Comma-separated models to train."),
    all_models: bool = typer.Option(False, "--all-models", help="Train every model (slower)."),
    scale: str = typer.Option("default", "--scale", help="Synthetic scale: small, default or large."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, compression and training."),
    quick: bool = typer.Option(False, "--quick", help="Small data and budgets (about a minute)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
) -> None:
    """Synthesise data, learn embeddings, compress, train twinv2 and twin, evaluate, write a report."""
    from twinv2.demo import run_demo

    result = run_demo(out, models=None if all_models else [m.strip() for m in models.split(",") if m.strip()],
                      scale=scale, seed=seed, quick=quick, device=device, console=console)
    Console().print(result.summary_table)
    console.print(f"report: {result.report_path}", highlight=False)


def main() -> None:
    """Entry point of the ``twinv2`` console script."""
    app()


if __name__ == "__main__":
    main()

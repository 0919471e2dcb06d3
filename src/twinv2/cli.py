"""The ``twinv2`` command line: thin typer wrappers over library functions.

Each command parses options, calls one library function, and prints a short summary. Library errors
(:class:`twinv2.errors.Twinv2Error`) become a one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from twinv2.errors import ConfigError, Twinv2Error

console = Console(stderr=True)


def _one_line_usage_error(exc: Exception) -> None:
    """Print a command-line usage error (bad option value, unknown option, missing option) as ONE line
    naming the command and the option, and exit 2; anything else (help on a bare group) passes through."""
    format_message = getattr(exc, "format_message", None)
    if type(exc).__name__ == "NoArgsIsHelpError" or getattr(exc, "exit_code", None) != 2 or format_message is None:
        raise exc
    ctx = getattr(exc, "ctx", None)
    where = f"{ctx.command_path}: " if ctx is not None else ""
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = " ".join(str(format_message()).split())  # one line, whatever the library wrapped
    console.print(f"[bold red]error:[/] {where}{message}{hint}", highlight=False, soft_wrap=True, markup=True)
    raise typer.Exit(code=2) from exc


class _OneLineErrorsGroup(TyperGroup):
    """The root command group: usage errors of any subcommand become one line, like library errors."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except typer.TyperException as exc:
            _one_line_usage_error(exc)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:
            _one_line_usage_error(exc)


app = typer.Typer(help="Life-cycle user behavior modeling for CTR prediction (TWIN-V2).", no_args_is_help=True,
                  pretty_exceptions_enable=False, cls=_OneLineErrorsGroup)
data_app = typer.Typer(help="Create, import and describe datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def os_error_message(exc: OSError) -> str:
    """One line for a failed file operation: the file(s), then what went wrong (permission denied, disk
    full, not a directory...), whatever the raising library put in ``str(exc)``."""
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    if exc.strerror and files:
        return f"{' -> '.join(files)}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def check_can_create(path: Path) -> None:
    """Fail early, naming the path, where ``path`` cannot become a folder: it is a file, a file sits among
    its parents, or the folder that would hold it is not writable (tried with a temporary folder)."""
    import errno
    import tempfile

    if path.exists():
        if not path.is_dir():
            raise FileExistsError(errno.EEXIST, "exists and is not a folder", str(path))
        holder = path
    else:
        holder = path.parent
        while not holder.exists() and holder != holder.parent:
            holder = holder.parent
        if not holder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(holder))
    tempfile.TemporaryDirectory(dir=holder).cleanup()


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn library errors and failed file operations into a one-line message and exit code 2 instead of
    a traceback. Other exceptions are bugs and keep their traceback, so that they get reported."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Twinv2Error as exc:
            message = str(exc)
        except OSError as exc:  # not found, permission denied, disk full, read-only filesystem...
            message = os_error_message(exc)
        console.print(f"[bold red]error:[/] {' '.join(message.splitlines())}", highlight=False, soft_wrap=True,
                      markup=True)
        raise typer.Exit(code=2)

    return wrapper


def print_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=float) + "\n")


# ---- data ------------------------------------------------------------------------------------------


@data_app.command("synth")
@friendly_errors
def data_synth(
    out: Path = typer.Option(..., "--out", help="Dataset folder to write (an existing dataset folder is replaced)."),
    users: int | None = typer.Option(None, "--users", min=1, help="Number of users (default: the scale's preset)."),
    scale: str = typer.Option("default", "--scale", help="Preset: small, default, large, or lifecycle (heavy users, "
                                                             "long-dormant interests; see docs/synthetic.md)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed; the same seed gives the same dataset."),
    max_events: int | None = typer.Option(None, "--max-events", min=1,
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
    plot: Path | None = typer.Option(None, help="Write the history-length histogram PNG here (default: no "
                                                "plot; DATASET is only read)."),
    headroom_len: int = typer.Option(500, "--headroom-len", min=1,
                                     help="L of the life-cycle headroom: share of positives whose previous "
                                          "same-category behavior lies beyond the last L behaviors."),
    headroom_start: int | None = typer.Option(None, "--headroom-start",
                                              help="Headroom window start, unix seconds (with --headroom-end; "
                                                   "default: the test window of the default split, the last "
                                                   "5% of events)."),
    headroom_end: int | None = typer.Option(None, "--headroom-end", help="Headroom window end (exclusive), unix "
                                                                         "seconds."),
    headroom_category: str | None = typer.Option(None, "--headroom-category",
                                                 help="Item column compared (default: category_id, else the "
                                                      "first inherent categorical)."),
) -> None:
    """Users, items, events, label rate, time range, history-length percentiles and life-cycle headroom."""
    from twinv2.data.describe import describe_dataset, render_description

    if (headroom_start is None) != (headroom_end is None):
        raise ConfigError("--headroom-start and --headroom-end go together: give both or neither")
    window = None if headroom_start is None or headroom_end is None else (headroom_start, headroom_end)
    summary = describe_dataset(dataset, plot_path=plot, headroom_len=headroom_len, headroom_window=window,
                               headroom_category=headroom_category)
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


# ---- compress --------------------------------------------------------------------------------------

compress_app = typer.Typer(help="Compress life cycles into virtual items (TWIN-V2 offline clustering). "
                                "`twinv2 compress --dataset ...` is `twinv2 compress run --dataset ...`.")
app.add_typer(compress_app, name="compress")


def compress_run(
    ctx: typer.Context,
    dataset: Path | None = typer.Option(None, "--dataset", help="Dataset folder."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (an unfinished run there is resumed)."),
    snapshot_ts: int | None = typer.Option(None, "--snapshot-ts", help="Use behaviors strictly before this "
                                           "time (int seconds)."),
    embeddings: str = typer.Option("cooccurrence", "--embeddings", help="'cooccurrence' (learned from the "
                                   "events before the snapshot), a .npy/.parquet file, or a checkpoint "
                                   "(.pt/.pth/.ckpt)."),
    embedding_ids: Path | None = typer.Option(None, "--embedding-ids", help="Ids of a .npy matrix (default "
                                              "<name>.ids.npy beside it)."),
    embedding_dim: int = typer.Option(32, "--embedding-dim", min=1, help="Dimensions of the co-occurrence default."),
    missing_embedding: str = typer.Option("error", "--missing-embedding", help="error | random: event items "
                                          "absent from the embedding source."),
    allow_embedding_leakage: bool = typer.Option(False, "--allow-embedding-leakage",
                                                 help="Accept a checkpoint (--embeddings) whose train window "
                                                 "reaches past --snapshot-ts; recorded in the manifest."),
    gamma: int = typer.Option(20, "--gamma", min=1, help="Largest cluster size."),
    groups: int = typer.Option(5, "--groups", min=1, max=127, help="Play-completion groups M."),
    group_bins: str = typer.Option("uniform", "--group-bins", help="uniform | quantile."),
    method: str = typer.Option("hierarchical", "--method", help="hierarchical | flat | random."),
    flat_k: int | None = typer.Option(None, "--flat-k", min=1, help="Clusters per group for --method flat "
                                      "(default ceil(n / gamma))."),
    split_exponent: float = typer.Option(0.3, "--split-exponent", help="A set of n > gamma splits into "
                                         "max(2, floor(n ** e)) clusters."),
    split_by: str | None = typer.Option(None, "--split-by", metavar="NAME", help="Cluster within (completion "
                                        "group x value of this inherent categorical, e.g. category_id): no "
                                        "virtual item mixes two values. 'none' = no split (default). With "
                                        "--incremental: must match the base's (default: the base's)."),
    max_clusters: int | None = typer.Option(None, "--max-clusters", min=1, help="Per-user budget of virtual "
                                            "items: a user over it is re-clustered with gamma doubled until the "
                                            "clusters fit (e.g. the GSU length L minus the raw part)."),
    backend: str = typer.Option("local", "--backend", help="local | spark."),
    workers: int = typer.Option(max(1, os.cpu_count() or 1), "--workers", min=1, help="Worker processes (local) or "
                                "local Spark cores."),
    spark_master: str | None = typer.Option(None, "--spark-master", help="Spark master URL (default "
                                            "local[N] with N = --workers, or spark-submit's)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Base seed; user u clusters with the stream (seed, u)."),
    users_per_part: int = typer.Option(256, "--users-per-part", min=1, help="Users per part file (the unit of "
                                       "resumption)."),
    incremental: bool = typer.Option(False, "--incremental", help="Fold the behaviors in [base snapshot, "
                                     "--snapshot-ts) into the clusters of --base; write --out."),
    base: Path | None = typer.Option(None, "--base", help="The compressed folder --incremental starts from."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard a previous run in --out."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object."),
) -> None:
    """Cluster every user's behaviors before --snapshot-ts into virtual items (resumable, parallel)."""
    if ctx.invoked_subcommand is not None:  # the group callback before `compress stats` etc.
        return
    if dataset is None and out is None and snapshot_ts is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    missing = [name for name, v in (("--dataset", dataset), ("--out", out), ("--snapshot-ts", snapshot_ts))
               if v is None]
    if missing:
        raise ConfigError(f"twinv2 compress needs {', '.join(missing)}")
    from twinv2.compress import ClusterConfig, EmbeddingSource, compress_dataset, compress_incremental

    if incremental:
        if base is None:
            raise ConfigError("--incremental needs --base DIR (the compressed folder to update)")
        if backend != "local":
            raise ConfigError("--incremental runs on the local backend only")
        if max_clusters is not None:
            raise ConfigError("--max-clusters: an incremental run keeps its base's clustering; compress from "
                              "scratch to change it")
        summary = compress_incremental(base, dataset, out, snapshot_ts, workers=workers, overwrite=overwrite,
                                       progress=not quiet,
                                       split_by=... if split_by is None else _split_by_name(split_by))
    else:
        if base is not None:
            raise ConfigError("--base is only used with --incremental")
        config = ClusterConfig(gamma=gamma, num_groups=groups, group_bins=group_bins, method=method,
                               flat_k=flat_k, split_exponent=split_exponent,
                               split_by=None if split_by is None else _split_by_name(split_by),
                               max_clusters=max_clusters)
        source = EmbeddingSource.parse(embeddings, ids_path=embedding_ids, dim=embedding_dim,
                                       missing=missing_embedding, allow_leakage=allow_embedding_leakage)
        summary = compress_dataset(dataset, out, snapshot_ts, embeddings=source, config=config, backend=backend,
                                   workers=workers, seed=seed, users_per_part=users_per_part,
                                   overwrite=overwrite, progress=not quiet, spark_master=spark_master)
    if as_json:
        print_json(summary.to_dict())
        return
    s = summary
    if s.already_complete:
        console.print(f"{s.out} is already complete: {s.num_behaviors:,} behaviors, {s.num_clusters:,} virtual "
                      f"items (ratio {s.compression_ratio:.4f}); nothing to do", highlight=False, soft_wrap=True)
        return
    reused = f", {s.parts_skipped} finished parts reused" if s.parts_skipped else ""
    console.print(f"compressed {s.num_users:,} users: {s.behaviors_in:,} behaviors in, {s.num_clusters:,} virtual "
                  f"items out (ratio {s.compression_ratio:.4f}) in {s.seconds:.1f} s{reused} -> {s.out}",
                  highlight=False, soft_wrap=True)


def _split_by_name(value: str) -> str | None:
    """``--split-by``: ``none`` means no split; an empty name is refused (the dataset check names the rest)."""
    if not value.strip():
        raise ConfigError("--split-by: expected the name of an inherent categorical (e.g. category_id) or 'none'")
    return None if value == "none" else value


compress_app.callback(invoke_without_command=True)(friendly_errors(compress_run))
compress_app.command("run")(friendly_errors(compress_run))


@compress_app.command("stats")
@friendly_errors
def compress_stats(
    folder: Path = typer.Argument(..., help="A folder written by `twinv2 compress`."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    plot: Path | None = typer.Option(None, help="Write the cluster-size histogram PNG here (default: no "
                                                "plot; FOLDER is only read)."),
) -> None:
    """Compression ratio, cluster sizes, clusters per completion group and intra-cluster distance."""
    from twinv2.compress.stats import compression_stats, render_stats

    summary = compression_stats(folder, plot_path=plot)
    if as_json:
        print_json(summary)
    else:
        Console().print(render_stats(summary))


@compress_app.command("embeddings")
@friendly_errors
def compress_embeddings(
    dataset: Path = typer.Option(..., "--dataset", help="Dataset folder."),
    out: Path = typer.Option(..., "--out", help="File to write: .parquet (item_id, raw_item_id, embedding) or "
                             ".npy (+ .ids.npy)."),
    before_ts: int | None = typer.Option(None, "--before-ts", help="Learn only from behaviors before this time "
                                         "(use the compression snapshot; default: all events)."),
    dim: int = typer.Option(32, "--dim", min=1, help="Embedding dimensions."),
    window: int = typer.Option(5, "--window", min=1, help="Items at most this many behaviors apart co-occur."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the randomized SVD and the fallback vectors."),
) -> None:
    """Write the training-free co-occurrence embeddings (the compression default) to a file."""
    from twinv2.compress.embeddings import export_cooccurrence_embeddings

    info = export_cooccurrence_embeddings(dataset, out, dim=dim, window=window, before_ts=before_ts, seed=seed)
    console.print(f"wrote {info['items']:,} item embeddings ({info['items_learned']:,} learned from "
                  f"co-occurrence, the rest hashed fallbacks), dim {dim} -> {info['path']}", highlight=False,
                  soft_wrap=True)


# ---- training and evaluation ------------------------------------------------------------------------


@app.command("train")
@friendly_errors
def train_cmd(
    dataset: Path | None = typer.Option(None, "--dataset", help="Dataset folder (default with --resume: the "
                                        "one the run was started on)."),
    model: str | None = typer.Option(None, "--model", help="Long-term module: twinv2, twin, dare, "
                                     "sim_soft, sim_hard, eta, sdim, din, avg_pool."),
    out: Path = typer.Option(..., "--out", help="Run folder: best.pt, last.pt, history.json, config.yaml."),
    compressed: list[Path] | None = typer.Option(None, "--compressed", help="Compressed life cycles (required "
                                                 "by twinv2; made by `twinv2 compress`). Repeat it to pass "
                                                 "versions built on a cadence: each sample reads the latest one "
                                                 "built before it."),
    config: Path | None = typer.Option(None, "--config", help="YAML config (see configs/default.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override one config value, e.g. --set "
                                   "model.esu_size=50 (repeatable; applied last)."),
    epochs: int | None = typer.Option(None, min=1, help="train.epochs"),
    batch_size: int | None = typer.Option(None, min=1, help="train.batch_size"),
    long_len: int | None = typer.Option(None, min=1, help="data.long_len: GSU input length L"),
    esu_size: int | None = typer.Option(None, min=1, help="model.esu_size: ESU size k"),
    max_train_samples: int | None = typer.Option(None, min=1, help="data.max_train_samples"),
    seed: int | None = typer.Option(None, min=0, help="train.seed"),
    device: str | None = typer.Option(None, help="train.device: auto (CUDA when present), cpu or cuda"),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from last.pt (with any "
                                "number of processes)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in an --out that holds a run."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON object."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Train with N processes on this machine: runs `torchrun "
                              "--standalone --nproc-per-node N -m twinv2 train` with the other options (gloo on "
                              "CPU, nccl on CUDA; see docs/training.md for several machines)."),
) -> None:
    """Train a CTR model with early stopping on validation GAUC; writes best and last checkpoints."""
    from twinv2.train.distributed import env_world_size, launch_torchrun
    from twinv2.train.loop import run_training

    if nproc > 1:
        if env_world_size() > 1:
            raise ConfigError("--nproc: this process is already one rank of a torchrun job; drop --nproc (torchrun's "
                              "--nproc-per-node sets the number of processes)")
        args = _train_args(dataset=dataset, model=model, out=out, compressed=compressed or [], config=config,
                           set_=set_, epochs=epochs, batch_size=batch_size, long_len=long_len, esu_size=esu_size,
                           max_train_samples=max_train_samples, seed=seed, device=device, resume=resume,
                           overwrite=overwrite, as_json=as_json)
        raise typer.Exit(code=launch_torchrun(nproc, ["train", *args]))
    options = {"train.epochs": epochs, "train.batch_size": batch_size, "data.long_len": long_len,
               "model.esu_size": esu_size, "data.max_train_samples": max_train_samples, "train.seed": seed,
               "train.device": device}
    result = run_training(out, dataset=dataset, model=model, compressed=_one_or_many(compressed),
                          config_file=config,
                          overrides=set_, options=options, resume=resume, overwrite=overwrite, console=console)
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun, rank 0 reports for the job
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


def _train_args(*, compressed: list[Path], set_: list[str], resume: bool, overwrite: bool, as_json: bool,
                **options: Any) -> list[str]:
    """``twinv2 train``'s command-line arguments for the given option values (what ``--nproc`` hands on to
    each rank): ``--name value`` for every option that is set, repeated options repeated, flags bare."""
    args: list[str] = []
    for name, value in options.items():
        if value is not None:
            args += [f"--{name.replace('_', '-')}", str(value)]
    for path in compressed:
        args += ["--compressed", str(path)]
    for item in set_:
        args += ["--set", item]
    args += [flag for flag, on in (("--resume", resume), ("--overwrite", overwrite), ("--json", as_json)) if on]
    return args


def _one_or_many(paths: list[Path] | None) -> Path | list[Path] | None:
    """A repeatable --compressed option: None when absent, the path when given once, else the list."""
    if not paths:
        return None
    return paths[0] if len(paths) == 1 else list(paths)


@app.command("evaluate")
@friendly_errors
def evaluate_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by `twinv2 train`."),
    split: str = typer.Option("test", "--split", help="train, valid or test (windows of the run's split)."),
    dataset: Path | None = typer.Option(None, "--dataset", help="Dataset folder (default: the training one)."),
    compressed: list[Path] | None = typer.Option(None, "--compressed", help="Compressed life cycles for twinv2 "
                                                 "(default: the training ones); repeatable, as in train."),
    max_samples: int | None = typer.Option(None, min=1, help="Seeded subsample of the window (default: all)."),
    batch_size: int | None = typer.Option(None, min=1, help="Evaluation batch size (default: the run's)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
    diagnostics: bool = typer.Option(False, "--diagnostics", help="Also report the GSU's retrieval "
                                     "diagnostics (category hit rate and recall, score terms, ages)."),
) -> None:
    """AUC, GAUC (with users/impressions counted) and log loss, overall and per user-activity tertile."""
    from twinv2.train.evaluate import evaluate_checkpoint, render_evaluation

    report = evaluate_checkpoint(checkpoint, split, dataset=dataset, compressed=_one_or_many(compressed),
                                 max_samples=max_samples, batch_size=batch_size, device=device,
                                 console=console, show_progress=not as_json, diagnostics=diagnostics)
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
    models: str | None = typer.Option(None, "--models", help="Comma-separated models to train (default: "
                                      "twinv2, twin and sim_hard, the comparison a user makes first)."),
    all_models: bool = typer.Option(False, "--all-models", help="Train every model (slower)."),
    scale: str | None = typer.Option(None, "--scale", help="Synthetic scale: small, default or large (default: "
                                     "default; small with --quick)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the data, compression and training."),
    quick: bool = typer.Option(False, "--quick", help="Small data and budgets (well under a minute)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda"),
) -> None:
    """Synthesise data, learn embeddings, compress, train twinv2, twin and sim_hard, evaluate, write a report."""
    from twinv2.data.synth import SCALES
    from twinv2.demo import DEMO_MODELS, run_demo

    if scale is not None and scale not in SCALES:
        raise ConfigError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    check_can_create(out)  # before minutes of work, not at the first write
    chosen = list(DEMO_MODELS) if models is None else [m.strip() for m in models.split(",") if m.strip()]
    result = run_demo(out, models=None if all_models else chosen,
                      scale=scale, seed=seed, quick=quick, device=device, console=console)
    Console().print(result.summary_table)
    console.print(f"report: {result.report_path}", highlight=False)


@app.command("serve")
@friendly_errors
def serve_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="The model to serve (a `twinv2 train` checkpoint)."),
    compressed: Path | None = typer.Option(None, "--compressed", help="A `twinv2 compress` folder to load as the "
                                           "active version (needed on the first start of a twinv2 model)."),
    store: str = typer.Option("sqlite://twinv2-serve.db", "--store", help="sqlite:///PATH.db (or a path), or "
                              "redis://HOST:PORT/DB."),
    dataset: Path | None = typer.Option(None, "--dataset", help="Raw behaviors of the first load (default: the "
                                        "dataset the compression job or the training read)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Bind address (loopback by default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes (each holds a model and cache)."),
    threads: int = typer.Option(1, "--threads", min=1, help="Torch threads per worker."),
    device: str = typer.Option("cpu", "--device", help="Where each worker scores: cpu, cuda or cuda:N."),
    fold_cap: int | None = typer.Option(None, "--fold-cap", help="Raw behaviors since a user's snapshot before "
                                        "the oldest are folded into clusters (default: the model's raw_cap or 256)."),
    max_candidates: int = typer.Option(2000, "--max-candidates", min=1, help="Candidates per request."),
    oov: str = typer.Option("reject", "--oov", help="Unknown candidate ids: reject (422) or unknown (score as "
                            "the unknown item)."),
    admin_token: str | None = typer.Option(None, "--admin-token", envvar="TWINV2_ADMIN_TOKEN",
                                           help="Bearer token of /v1/admin/reload (default: admin disabled)."),
) -> None:
    """Serve a checkpoint over HTTP: scores with explanations, live events, metrics (OpenAPI at /docs)."""
    from twinv2.serve.server import run_server
    from twinv2.serve.service import ServeConfig

    config = ServeConfig(checkpoint=str(checkpoint), store=store, compressed=None if compressed is None else
                         str(compressed), dataset=None if dataset is None else str(dataset), fold_cap=fold_cap,
                         max_candidates=max_candidates, oov=oov, admin_token=admin_token, threads=threads,
                         device=device)

    def ready(service: Any) -> None:
        health = service.health()
        console.print(f"serving {health['long_term']} {health['model_version']} on http://{host}:{port} "
                      f"(store {health['store']}, snapshot {health['snapshot_ts']}, {workers} worker(s))",
                      highlight=False)

    run_server(config, host=host, port=port, workers=workers, on_ready=ready)


def main() -> None:
    """Entry point of the ``twinv2`` console script."""
    app()


if __name__ == "__main__":
    main()

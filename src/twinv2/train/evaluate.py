"""Evaluation: predictions, AUC / GAUC / log loss overall and per user-activity group, and the embedding
export that feeds the compression job.

User-activity groups (DESIGN §3) are history-length tertiles. A user's history length is the number of
raw behaviors they have strictly before the start of the evaluated window (one value per user, so a user
never straddles two groups and per-group GAUC is well defined). The two thresholds are the 1/3 and 2/3
quantiles of that length over the distinct users who appear in the evaluated samples (each user counted
once, not weighted by impressions): ``low`` = length <= q1, ``mid`` = q1 < length <= q2, ``high`` =
length > q2. On tie-heavy data a group can be empty; it is then reported with zero samples.

Headroom buckets (DESIGN §3, "how far from the limit"): every evaluated sample is also put in one of
``within_50``, ``within_L``, ``beyond_L``, ``never`` by how far back, in the user's raw behaviors before the
sample, the previous behavior of the target's category lies
(:func:`twinv2.data.headroom.sample_headroom_buckets`, ``L`` = the run's GSU input length). The
``beyond_L`` samples are the ones where only a life-cycle model can see category evidence; AUC and GAUC per
bucket say whether a model gains there.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from twinv2._progress import make_progress
from twinv2.data.batches import BatchBuilder
from twinv2.data.headroom import SAMPLE_BUCKETS, SampleBuckets, sample_headroom_buckets
from twinv2.data.split import SPLITS, Samples, make_samples
from twinv2.data.store import Dataset, load_dataset
from twinv2.errors import ConfigError, DataValidationError
from twinv2.models import CTRModel
from twinv2.train._runtime import resolve_device, torch_threads
from twinv2.train.inputs import CompressedPaths, open_compressed_versions
from twinv2.train.metrics import UndefinedMetricWarning, evaluate_predictions

__all__ = [
    "ACTIVITY_GROUPS",
    "ActivityGroups",
    "activity_groups",
    "evaluate_checkpoint",
    "evaluate_samples",
    "export_embeddings",
    "metrics_report",
    "predict",
    "render_evaluation",
]

ACTIVITY_GROUPS = ("low", "mid", "high")


@torch.inference_mode()
def predict(model: CTRModel, builder: BatchBuilder, samples: Samples, *, batch_size: int,
            device: torch.device, console: Console | None = None, show_progress: bool = False,
            description: str = "evaluate") -> np.ndarray:
    """Click probabilities for ``samples``, float64 ``[N]``, in sample order.

    The sigmoid is taken in float64 so that confident predictions do not collapse into ties.
    """
    was_training = model.training
    model.eval()
    out = np.empty(len(samples), dtype=np.float64)
    num_batches = -(-len(samples) // batch_size)
    with make_progress(console, show=show_progress) as progress:
        task = progress.add_task(description, total=num_batches, info="")
        for b in range(num_batches):
            index = np.arange(b * batch_size, min((b + 1) * batch_size, len(samples)))
            batch = builder.build(samples, index).to(device)
            logits = model(batch)  # [B]
            out[index] = torch.sigmoid(logits.double()).cpu().numpy()
            progress.advance(task)
    model.train(was_training)
    return out


@dataclass
class ActivityGroups:
    """Activity group of every sample and how the groups were defined.

    Attributes:
        group: int8 ``[N]``, 0 = low, 1 = mid, 2 = high (index into :data:`ACTIVITY_GROUPS`).
        history_length: int64 ``[N]``, the sample's user's behaviors before the window start.
        thresholds: ``(q1, q2)`` history-length tertile bounds over the distinct users.
    """

    group: np.ndarray
    history_length: np.ndarray
    thresholds: tuple[float, float]


def activity_groups(dataset: Dataset, samples: Samples, window_start: int) -> ActivityGroups:
    """Assign each sample's user to a history-length tertile (see the module docstring)."""
    h = dataset.histories
    users = np.unique(samples.user_id)
    user_len = h.end_before(users, np.full(len(users), window_start, dtype=np.int64)) - h.offsets[users]
    q1, q2 = (float(q) for q in np.quantile(user_len, [1 / 3, 2 / 3]))
    per_sample = user_len[np.searchsorted(users, samples.user_id)]
    group = np.where(per_sample <= q1, 0, np.where(per_sample <= q2, 1, 2)).astype(np.int8)
    return ActivityGroups(group=group, history_length=per_sample.astype(np.int64), thresholds=(q1, q2))


def _metrics(samples: Samples, probs: np.ndarray) -> dict[str, Any]:
    if len(samples) == 0:
        return {"impressions": 0, "positives": 0, "positive_rate": float("nan"), "auc": float("nan"),
                "gauc": float("nan"), "gauc_users": 0, "gauc_impressions": 0, "gauc_users_skipped": 0,
                "gauc_impressions_skipped": 0, "log_loss": float("nan")}
    with warnings.catch_warnings():
        # A one-class slice (tiny group) has an undefined AUC; the report shows nan and the counts.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        return evaluate_predictions(samples.user_id, samples.label, probs)


def metrics_report(dataset: Dataset, samples: Samples, probs: np.ndarray, window_start: int, *,
                   by_group: bool = True, long_len: int | None = None,
                   buckets: SampleBuckets | None = None) -> dict[str, Any]:
    """Overall metrics plus one block per activity group and per headroom bucket (JSON-ready).

    Args:
        samples: ``N`` samples; probs: float ``[N]`` predicted click probabilities in sample order.
        window_start: start of the evaluated window (activity groups count behaviors before it).
        by_group: False (validation during training) reports the overall block only.
        long_len: ``L`` of the headroom buckets (the run's GSU input length); None skips the buckets.
        buckets: precomputed :func:`~twinv2.data.headroom.sample_headroom_buckets` of ``samples`` (reused
            across models evaluated on the same rows); default: computed here when ``long_len`` is given.
    Returns:
        ``num_samples``, ``num_users``, ``auc``, ``gauc``, ``gauc_users``, ``gauc_impressions``, ``logloss``
        (plus the other counts of :func:`~twinv2.train.metrics.evaluate_predictions`); with ``by_group``:
        ``group_thresholds`` and ``groups`` = {``low``, ``mid``, ``high``} each with the same metric keys and
        ``history_length_min``/``max`` (None for an empty group); with buckets: ``buckets`` =
        {``within_50``, ``within_L``, ``beyond_L``, ``never``} each with the same metric keys, and
        ``bucket_definition`` (category, L, bounds). A dataset without an inherent categorical column has
        ``buckets: None``.
    """
    def block(sel: Samples, p: np.ndarray) -> dict[str, Any]:
        m = _metrics(sel, p)
        m["logloss"] = m.pop("log_loss")
        m["num_samples"] = len(sel)
        m["num_users"] = len(np.unique(sel.user_id))
        return m

    report = block(samples, probs)
    if not by_group:
        return report
    groups = activity_groups(dataset, samples, window_start)
    report["group_thresholds"] = list(groups.thresholds)
    report["groups"] = {}
    for g, name in enumerate(ACTIVITY_GROUPS):
        sel = groups.group == g
        b = block(samples.subset(sel), probs[sel])
        lengths = groups.history_length[sel]
        b["history_length_min"] = int(lengths.min()) if lengths.size else None
        b["history_length_max"] = int(lengths.max()) if lengths.size else None
        report["groups"][name] = b
    if buckets is None and long_len is not None:
        try:
            buckets = sample_headroom_buckets(dataset, samples, long_len)
        except DataValidationError:  # no inherent categorical column: no buckets to report
            report["buckets"], report["bucket_definition"] = None, None
            return report
    if buckets is not None:
        if len(buckets.bucket) != len(samples):
            raise ConfigError(f"headroom buckets of {len(buckets.bucket)} samples given for {len(samples)} samples")
        report["bucket_definition"] = buckets.definition()
        report["buckets"] = {name: block(samples.subset(buckets.bucket == b), probs[buckets.bucket == b])
                             for b, name in enumerate(SAMPLE_BUCKETS)}
    return report


def evaluate_samples(model: CTRModel, builder: BatchBuilder, samples: Samples, window_start: int, *,
                     batch_size: int, device: torch.device, console: Console | None = None,
                     show_progress: bool = False, description: str = "evaluate",
                     by_group: bool = True, bucket_len: int | None = None) -> dict[str, Any]:
    """Predict ``samples`` and compute :func:`metrics_report`, adding ``seconds``.

    With ``by_group`` the report also has the headroom buckets at ``L = bucket_len`` (default
    ``builder.config.long_len``; a benchmark comparing runs of several L passes one common L)."""
    t0 = time.perf_counter()
    probs = predict(model, builder, samples, batch_size=batch_size, device=device, console=console,
                    show_progress=show_progress, description=description)
    report = metrics_report(builder.dataset, samples, probs, window_start, by_group=by_group,
                            long_len=(bucket_len or builder.config.long_len) if by_group else None)
    report["seconds"] = time.perf_counter() - t0
    return report


def evaluate_checkpoint(checkpoint: str | os.PathLike, split: str = "test", *,
                        dataset: str | os.PathLike | Dataset | None = None,
                        compressed: CompressedPaths | None = None, batch_size: int | None = None,
                        max_samples: int | None = None, device: str = "auto", seed: int = 0,
                        num_threads: int = 0, console: Console | None = None,
                        show_progress: bool = True, diagnostics: bool = False,
                        bucket_len: int | None = None) -> dict[str, Any]:
    """Evaluate a checkpoint on one window of its own temporal split.

    Args:
        checkpoint: a ``.pt`` file written by training.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        dataset: the dataset (folder or loaded); default: the path stored in the checkpoint. Its manifest
            must match the checkpoint's (:class:`~twinv2.errors.CheckpointError` otherwise).
        compressed: compressed life cycles for ``twinv2`` (default: the folder used in training). Any
            snapshot up to the start of the evaluated window is allowed, e.g. clusters refreshed at the test
            start (the offline job rerun before the test period).
        max_samples: seeded subsample of the window (``None`` = the config's ``data.max_test_samples`` for
            the test window, all events otherwise).
        num_threads: torch threads (0 = every core but one, see :func:`default_num_threads`).
        diagnostics: also report the GSU's retrieval diagnostics on (at most 5,000 of) the same samples
            (:func:`twinv2.train.diagnostics.retrieval_diagnostics`) under ``diagnostics``.
        bucket_len: ``L`` of the per-sample headroom buckets (``buckets`` in the report); default: the
            checkpoint's GSU input length.
    Returns:
        :func:`metrics_report` plus ``split``, ``model``, ``checkpoint``, ``seconds`` (and ``diagnostics``).
    """
    from twinv2.train.checkpoint import check_dataset_matches, load_checkpoint

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {SPLITS}")
    dev = resolve_device(device)
    model, info = load_checkpoint(checkpoint, device=dev)
    if not isinstance(dataset, Dataset):
        dataset = load_dataset(dataset if dataset is not None else info.dataset_path)
    check_dataset_matches(info, dataset)
    comp = None
    if info.sequence_config.long_source == "compressed":
        comp_path = compressed if compressed is not None else info.compressed_path
        comp = open_compressed_versions(comp_path, dataset, info.split.window(split)[0], window=split,
                                        model_name=info.config.model.long_term)
    builder = BatchBuilder(dataset, info.sequence_config, comp)
    if max_samples is None and split == "test":
        max_samples = info.config.data.max_test_samples
    samples = make_samples(dataset, info.split, split, max_samples=max_samples, seed=seed)
    lo, _ = info.split.window(split)
    with torch_threads(num_threads):
        report = evaluate_samples(model, builder, samples, lo,
                                  batch_size=batch_size or info.config.train.eval_batch_size, device=dev,
                                  console=console, show_progress=show_progress,
                                  description=f"evaluate {info.config.model.long_term} on {split}",
                                  bucket_len=bucket_len)
        if diagnostics:
            from twinv2.train.diagnostics import retrieval_diagnostics

            report["diagnostics"] = retrieval_diagnostics(model, builder, samples, device=dev, seed=seed,
                                                          batch_size=batch_size or info.config.train.eval_batch_size)
    return {"split": split, "model": info.config.model.long_term, "checkpoint": str(Path(checkpoint)),
            **report}


def export_embeddings(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write a checkpoint's item embedding table as an embedding file the compression job reads
    (``--embeddings FILE``): ``.parquet`` (``item_id``, ``embedding``) or ``.npy`` (+ ``.ids.npy``).

    The rows are the dataset's dense items ``1..num_items`` (the padding row 0 is left out), float32
    ``[num_items, id_dim]``.
    """
    from twinv2.compress.embeddings import write_embedding_file
    from twinv2.train.checkpoint import read_checkpoint

    payload = read_checkpoint(checkpoint)
    table = payload["item_embeddings"].numpy()  # [num_items + 1, id_dim]
    ids = np.arange(1, table.shape[0], dtype=np.int64)
    return write_embedding_file(out, ids, table[1:])


def render_evaluation(report: dict[str, Any]):
    """A rich table of :func:`evaluate_checkpoint`'s report: overall row, then one row per activity group."""
    from rich.table import Table

    table = Table(title=f"{report.get('model', '')} on {report.get('split', '')} "
                        f"({report['num_samples']} samples, {report['num_users']} users)")
    for col in ("slice", "history length", "samples", "AUC", "GAUC", "GAUC users / impressions", "log loss"):
        table.add_column(col, justify="left" if col == "slice" else "right")

    def row(name: str, b: dict[str, Any], lengths: str) -> None:
        table.add_row(name, lengths, str(b["num_samples"]), f"{b['auc']:.4f}", f"{b['gauc']:.4f}",
                      f"{b['gauc_users']} / {b['gauc_impressions']}", f"{b['logloss']:.4f}")

    row("all", report, "")
    for name in ACTIVITY_GROUPS:
        b = report["groups"][name]
        lengths = "" if b["history_length_min"] is None else f"{b['history_length_min']}-{b['history_length_max']}"
        row(name, b, lengths)
    if report.get("buckets"):
        L = report["bucket_definition"]["long_len"]
        table.add_section()
        bounds = report["bucket_definition"]["bounds"]
        for name in SAMPLE_BUCKETS:
            label = "no previous" if name == "never" else f"previous {bounds[name]} back"
            row(f"{name} ({label})" if name != "beyond_L" else f"beyond_L (L = {L})", report["buckets"][name], "")
        table.caption = (f"headroom buckets: distance from the sample to the user's previous behavior of the "
                         f"target's {report['bucket_definition']['category']}")
    diag = report.get("diagnostics")
    if diag is None:
        return table
    from rich.console import Group

    return Group(table, render_diagnostics(diag))


_DIAGNOSTIC_ROWS = (
    ("category_hit_rate", "GSU category hit rate (share of the k kept with the target's category)", "{:.3f}"),
    ("category_share_in_long", "same share over the whole L (random choice)", "{:.3f}"),
    ("retrieval_lift", "retrieval lift (hit rate / share in L)", "{:.2f}"),
    ("category_recall", "category recall (kept / min(k, same-category in L); sim_hard: 1)", "{:.3f}"),
    ("relevance_abs", "mean |relevance term| of the kept", "{:.3f}"),
    ("cross_bias_abs", "mean |cross bias| of the kept", "{:.3f}"),
    ("match_abs", "mean |exact-match term| of the kept", "{:.3f}"),
    ("log_size_abs", "mean ln n of the kept", "{:.3f}"),
    ("virtual_share", "virtual items among the kept", "{:.3f}"),
    ("selected_age_days_median", "median age of the kept (days)", "{:.1f}"),
    ("long_age_days_median", "median age over L (days)", "{:.1f}"),
    ("same_category_in_long_mean", "same-category behaviors in L per sample", "{:.1f}"),
    ("share_without_same_category", "samples with none in L", "{:.3f}"),
    ("esu_weight_same_category", "ESU weight on the kept of the target's category (samples with any)", "{:.3f}"),
    ("esu_weight_same_category_uniform", "same, if the ESU weighed the kept uniformly", "{:.3f}"),
    ("beyond_L_samples", "samples whose previous same-category behavior is beyond L", "{}"),
    ("beyond_L_same_category_kept_share", "beyond L: share where the GSU kept an item of the target's category",
     "{:.3f}"),
    ("beyond_L_virtual_kept_share", "beyond L: share where it kept a virtual item of that category", "{:.3f}"),
    ("beyond_L_esu_weight_same_category", "beyond L: mean ESU weight on such items", "{:.3f}"),
    ("beyond_L_esu_weight_when_kept", "beyond L: same, where one was kept", "{:.3f}"),
    ("gt_ndcg", "ground-truth NDCG@k of the GSU's kept set", "{:.3f}"),
    ("gt_gain_share", "ground-truth gain share of the kept set (order-free)", "{:.3f}"),
    ("gt_ndcg_sim_hard", "same NDCG@k for sim_hard's selection (L most recent raw)", "{:.3f}"),
    ("gt_ndcg_recent", "same NDCG@k for the k most recent raw behaviors", "{:.3f}"),
)


def render_diagnostics(diag: dict[str, Any]):
    """A rich table of :func:`~twinv2.train.diagnostics.retrieval_diagnostics`' output."""
    from rich.table import Table

    table = Table(title=f"retrieval diagnostics ({diag['num_samples']} samples, L = {diag['long_len']}, "
                        f"k = {diag['esu_size']}, category = {diag['category']})")
    table.add_column("diagnostic")
    table.add_column("value", justify="right")
    for key, label, fmt in _DIAGNOSTIC_ROWS:
        if key in diag:
            table.add_row(label, "n/a" if diag[key] is None else fmt.format(diag[key]))
    if not diag["learned_gsu"]:
        table.caption = "this model has no learned GSU: dataset-side and ground-truth rows only"
    if diag.get("gt_relevance"):
        table.caption = (table.caption + "; " if table.caption else "") + f"true relevance: {diag['gt_relevance']}"
    return table

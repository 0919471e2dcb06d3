"""``twinv2 compress stats``: how much a compressed folder compresses, and how tight its clusters are."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.compress.store import load_compressed

__all__ = ["compression_stats", "plot_cluster_sizes", "render_stats"]


def plot_cluster_sizes(sizes: np.ndarray, path: str | os.PathLike, gamma: int | None = None,
                       title: str = "") -> Path:
    """Write a histogram of cluster sizes (int ``[C]``) to ``path`` (PNG, atomic); marks ``gamma``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twinv2._io import save_figure_atomic

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    if sizes.size:
        top = int(sizes.max())
        counts = np.bincount(sizes, minlength=top + 1)[1:]
        ax.bar(np.arange(1, top + 1), counts, width=0.85, color="#3b6ea8")
        ax.set_yscale("log" if counts.max() > 100 * max(counts[counts > 0].min(), 1) else "linear")
    if gamma is not None:
        ax.axvline(gamma + 0.5, color="#c0392b", linestyle="--", linewidth=1, label=f"gamma = {gamma}")
        ax.legend()
    ax.set_xlabel("cluster size n (behaviors per virtual item)")
    ax.set_ylabel("clusters")
    ax.set_title(title or "Cluster size distribution")
    ax.grid(alpha=0.3, linewidth=0.4)
    return save_figure_atomic(fig, path)


def compression_stats(path: str | os.PathLike, plot_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Summarise a finished compressed folder; with ``plot_path``, also write its cluster-size histogram.

    Returns a JSON-ready dict: ``users``, ``users_with_clusters``, ``behaviors`` (represented),
    ``clusters``, ``compression_ratio`` (clusters / behaviors), ``mean_cluster_size``,
    ``clusters_per_user`` (``p50``, ``p90``, ``max``), ``cluster_size_histogram`` (``size`` and ``count``
    lists for sizes 1..max), ``clusters_per_group`` and ``behaviors_per_group`` (one entry per completion
    group), ``mean_sq_dist`` (behavior-weighted mean squared distance of a member to its cluster centroid, in
    the clustered space: unit vectors by default, so 0 = identical members, 2 = orthogonal on average) and
    ``rms_dist`` (its square root), ``snapshot_ts``, ``gamma``, ``method`` and ``plot`` (the PNG written, or
    ``None`` without ``plot_path``: the input folder is only read, never written to).
    """
    c = load_compressed(path)
    m = c.manifest
    sizes = c.cluster_size
    behaviors = int(sizes.sum())
    per_user = np.diff(c.offsets)
    num_groups = int(m["cluster_config"]["num_groups"])
    groups = c.completion_group.astype(np.int64)
    hist = np.bincount(sizes, minlength=int(sizes.max(initial=0)) + 1)[1:]
    gamma = int(m["cluster_config"]["gamma"])
    plot = None
    if plot_path is not None:
        plot = plot_cluster_sizes(sizes, plot_path, gamma=gamma,
                                  title=f"cluster sizes ({m['cluster_config']['method']}, gamma={gamma})")
    mean_sq = float((c.mean_sq_dist.astype(np.float64) * sizes).sum() / behaviors) if behaviors else 0.0
    p50, p90 = (float(x) for x in np.percentile(per_user, [50, 90])) if per_user.size else (0.0, 0.0)
    return {
        "users": int(c.num_users),
        "users_with_clusters": int((per_user > 0).sum()),
        "behaviors": behaviors,
        "clusters": int(c.num_clusters),
        "compression_ratio": c.num_clusters / behaviors if behaviors else 0.0,
        "mean_cluster_size": behaviors / c.num_clusters if c.num_clusters else 0.0,
        "clusters_per_user": {"p50": p50, "p90": p90, "max": int(per_user.max(initial=0))},
        "cluster_size_histogram": {"size": list(range(1, len(hist) + 1)), "count": hist.tolist()},
        "clusters_per_group": np.bincount(groups, minlength=num_groups).tolist(),
        "behaviors_per_group": np.bincount(groups, weights=sizes, minlength=num_groups).astype(np.int64).tolist(),
        "mean_sq_dist": mean_sq,
        "rms_dist": float(np.sqrt(mean_sq)),
        "snapshot_ts": int(c.snapshot_ts),
        "gamma": gamma,
        "method": m["cluster_config"]["method"],
        "plot": None if plot is None else str(plot),
    }


def render_stats(summary: dict[str, Any]):
    """A rich table of :func:`compression_stats`'s output for the terminal."""
    from rich.table import Table

    table = Table(title=f"compressed life cycles ({summary['method']}, gamma={summary['gamma']})",
                  show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    cpu = summary["clusters_per_user"]
    rows = [
        ("users", f"{summary['users']:,} ({summary['users_with_clusters']:,} with clusters)"),
        ("behaviors", f"{summary['behaviors']:,}"),
        ("virtual items", f"{summary['clusters']:,}"),
        ("compression ratio", f"{summary['compression_ratio']:.4f} (mean size {summary['mean_cluster_size']:.2f})"),
        ("virtual items per user p50 / p90 / max", f"{cpu['p50']:,.0f} / {cpu['p90']:,.0f} / {cpu['max']:,}"),
        ("clusters per completion group", " / ".join(f"{n:,}" for n in summary["clusters_per_group"])),
        ("mean squared distance to centroid", f"{summary['mean_sq_dist']:.4f} (rms {summary['rms_dist']:.4f})"),
        ("histogram", summary["plot"] or "not written (pass --plot PNG)"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table

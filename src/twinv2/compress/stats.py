"""``twinv2 compress stats``: how much a compressed folder compresses, how tight its clusters are, and how
well one value of each inherent categorical describes a cluster's members (member purity)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.compress.store import load_compressed, load_member_shares

__all__ = ["compression_stats", "member_purity", "plot_cluster_sizes", "render_stats"]


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


def member_purity(sizes: np.ndarray, majority_share: np.ndarray, rep_share: np.ndarray) -> dict[str, Any]:
    """Member purity of one categorical from the per-cluster shares.

    Args:
        sizes: int ``[C]`` members per cluster.
        majority_share: float ``[C]`` share of a cluster's members holding its most frequent value (NaN:
            unknown, e.g. an old cluster that grew in an incremental update).
        rep_share: float ``[C]`` share of its members holding the representative's value (NaN: unknown).
    Returns:
        ``purity`` (members holding their cluster's majority value / members, i.e. the cluster-size
        weighted mean of ``majority_share``), ``rep_is_majority`` (share of clusters whose representative
        holds a most frequent value), ``rep_share`` (members holding their representative's value /
        members: how much of the cluster the virtual item's categorical describes), ``behaviors_covered``
        (share of members in clusters whose shares are known) and ``clusters_covered``. The first three
        are None when no cluster is known.
    """
    sizes = np.asarray(sizes, np.int64)
    majority = np.asarray(majority_share, np.float64)
    rep = np.asarray(rep_share, np.float64)
    known = np.isfinite(majority) & np.isfinite(rep)
    n = sizes[known].astype(np.float64)
    total, members = int(sizes.sum()), float(n.sum())
    if not members:
        return {"purity": None, "rep_is_majority": None, "rep_share": None, "behaviors_covered": 0.0,
                "clusters_covered": 0}
    # Shares are count / n in float32: rounding back gives the exact counts (n < 2^24).
    majority_count, rep_count = np.rint(majority[known] * n), np.rint(rep[known] * n)
    return {
        "purity": float(majority_count.sum() / members),
        "rep_is_majority": float((rep_count == majority_count).mean()),
        "rep_share": float(rep_count.sum() / members),
        "behaviors_covered": members / total if total else 0.0,
        "clusters_covered": int(known.sum()),
    }


def compression_stats(path: str | os.PathLike, plot_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Summarise a finished compressed folder; with ``plot_path``, also write its cluster-size histogram.

    Returns a JSON-ready dict: ``users``, ``users_with_clusters``, ``behaviors`` (represented),
    ``clusters``, ``compression_ratio`` (clusters / behaviors), ``mean_cluster_size``,
    ``clusters_per_user`` (``p50``, ``p90``, ``max``), ``cluster_size_histogram`` (``size`` and ``count``
    lists for sizes 1..max), ``clusters_per_group`` and ``behaviors_per_group`` (one entry per completion
    group), ``mean_sq_dist`` (behavior-weighted mean squared distance of a member to its cluster centroid, in
    the clustered space: unit vectors by default, so 0 = identical members, 2 = orthogonal on average) and
    ``rms_dist`` (its square root), ``snapshot_ts``, ``gamma``, ``method``, ``split_by`` (the categorical
    clusters do not mix, or None), ``member_purity`` (per inherent categorical, :func:`member_purity`; None
    for a folder written before the member shares were recorded) and ``plot`` (the PNG written, or
    ``None`` without ``plot_path``: the input folder is only read, never written to).
    """
    c = load_compressed(path)
    shares = load_member_shares(path)
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
        "split_by": m["cluster_config"].get("split_by"),
        "member_purity": None if shares is None else {
            name: member_purity(sizes, majority, rep) for name, (majority, rep) in shares.items()},
        "plot": None if plot is None else str(plot),
    }


def render_stats(summary: dict[str, Any]):
    """A rich table of :func:`compression_stats`'s output for the terminal."""
    from rich.table import Table

    split = f", split by {summary['split_by']}" if summary.get("split_by") else ""
    table = Table(title=f"compressed life cycles ({summary['method']}, gamma={summary['gamma']}{split})",
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
        *_purity_rows(summary.get("member_purity")),
        ("histogram", summary["plot"] or "not written (pass --plot PNG)"),
    ]
    for k, v in rows:
        table.add_row(k, v)
    return table


def _purity_rows(purity: dict[str, dict[str, Any]] | None) -> list[tuple[str, str]]:
    if purity is None:
        return [("member purity", "unavailable (folder written before member shares were recorded)")]
    rows = []
    for name, p in purity.items():
        if p["purity"] is None:
            rows.append((f"member purity: {name}", "unavailable (no cluster with known shares)"))
            continue
        covered = "" if p["behaviors_covered"] >= 1.0 else f"; known for {p['behaviors_covered']:.1%} of behaviors"
        rows.append((f"member purity: {name}",
                     f"{p['purity']:.4f} (rep holds the majority value in {p['rep_is_majority']:.1%} of clusters; "
                     f"rep's value describes {p['rep_share']:.1%} of members{covered})"))
    return rows

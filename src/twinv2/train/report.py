"""Markdown tables and PNG plots for run reports (``twinv2 demo``) and benchmark results.

Plots are written atomically with matplotlib's non-interactive Agg backend; every function returns the
path it wrote. Means come with their standard deviation over seeds where there are several.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twinv2._io import atomic_file

__all__ = [
    "bar_plot",
    "fmt_mean_std",
    "grouped_bar_plot",
    "line_plot",
    "markdown_table",
    "mean_std",
    "write_text",
]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value) ignoring NaN."""
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=np.float64)
    if arr.size == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def fmt_mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``"0.7123 ± 0.0012"`` over several values, ``"0.7123"`` for one, ``"n/a"`` for none."""
    m, s = mean_std(values)
    if math.isnan(m):
        return "n/a"
    if len([v for v in values if v is not None and not math.isnan(v)]) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A GitHub Markdown table; ``align`` is one letter per column (``l``/``r``), default: first column
    left, others right."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    with atomic_file(path, "w") as fh:
        fh.write(text)
    return path


def _save(fig, path: str | os.PathLike) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    with atomic_file(path, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _ylim(ax, lows: np.ndarray, highs: np.ndarray) -> None:
    """Zoom the y axis on the data (metric differences are small; a 0-based axis would hide them)."""
    lo, hi = np.nanmin(lows), np.nanmax(highs)
    if np.isfinite(lo) and np.isfinite(hi):
        pad = max((hi - lo) * 0.25, 1e-3)
        ax.set_ylim(lo - pad, hi + pad)


def bar_plot(path: str | os.PathLike, labels: Sequence[str], means: Sequence[float],
             stds: Sequence[float] | None = None, *, ylabel: str, title: str,
             highlight: str | None = None) -> Path:
    """One bar per label with ±std error bars; the ``highlight`` label is drawn in a stronger colour."""
    plt = _pyplot()
    means_a = np.asarray(means, dtype=float)
    stds_a = np.zeros_like(means_a) if stds is None else np.nan_to_num(np.asarray(stds, dtype=float))
    fig, ax = plt.subplots(figsize=(max(4.8, 0.8 * len(labels) + 1.5), 3.8), dpi=110)
    colors = ["#c0392b" if lab == highlight else "#3b6ea8" for lab in labels]
    x = np.arange(len(labels))
    ax.bar(x, means_a, yerr=None if stds is None else stds_a, color=colors, capsize=4, edgecolor="white")
    for xi, m in zip(x, means_a, strict=True):
        if np.isfinite(m):
            ax.annotate(f"{m:.4f}", (xi, m), textcoords="offset points", xytext=(0, 3), ha="center",
                        fontsize=7)
    ax.set_xticks(x, labels, rotation=30 if len(labels) > 5 else 0, ha="right" if len(labels) > 5 else "center")
    _ylim(ax, means_a - stds_a, means_a + stds_a)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, linewidth=0.5)
    return _save(fig, path)


def grouped_bar_plot(path: str | os.PathLike, labels: Sequence[str], groups: Sequence[str],
                     means: Sequence[Sequence[float]], stds: Sequence[Sequence[float]] | None = None, *,
                     ylabel: str, title: str) -> Path:
    """Bars grouped by ``groups`` (x axis), one bar per label within each group.

    Args:
        means: ``[len(labels)][len(groups)]``; stds: same shape or None.
    """
    plt = _pyplot()
    m = np.asarray(means, dtype=float)
    s = np.zeros_like(m) if stds is None else np.nan_to_num(np.asarray(stds, dtype=float))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.2 * len(groups) * max(1, len(labels)) / 3 + 2), 3.9), dpi=110)
    width = 0.8 / max(1, len(labels))
    x = np.arange(len(groups))
    cmap = plt.get_cmap("tab10")
    for i, lab in enumerate(labels):
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, m[i], width, yerr=None if stds is None else s[i], label=lab,
               color=cmap(i % 10), capsize=2)
    ax.set_xticks(x, groups)
    _ylim(ax, m - s, m + s)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=min(4, len(labels)))
    ax.grid(axis="y", alpha=0.3, linewidth=0.5)
    return _save(fig, path)


def line_plot(path: str | os.PathLike, series: dict[str, tuple[Sequence[float], Sequence[float]]], *,
              xlabel: str, ylabel: str, title: str, xlog: bool = False) -> Path:
    """One line per named ``(x, y)`` series (markers at the points; ``xlog`` for a log-scale x axis)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.8), dpi=110)
    for name, (x, y) in series.items():
        if len(x):
            ax.plot(x, y, label=name, linewidth=1.4, marker="o" if len(x) < 20 else None, markersize=4)
    if xlog:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if series:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3, linewidth=0.5)
    return _save(fig, path)

"""``twinv2 data describe``: the shape of a dataset in numbers and one histogram."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.data.store import Dataset, load_dataset

__all__ = ["describe_dataset", "plot_history_lengths", "render_description"]


def plot_history_lengths(lengths: np.ndarray, path: str | os.PathLike, title: str = "") -> Path:
    """Write a log-log histogram of per-user history lengths (int ``[U]``) to ``path`` (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from twinv2._io import save_figure_atomic

    lengths = lengths[lengths > 0]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    if lengths.size:
        bins = np.logspace(0, np.log10(max(lengths.max(), 2)) + 0.05, 40)
        ax.hist(lengths, bins=bins, color="#3b6ea8", edgecolor="white", linewidth=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events per user (log scale)")
    ax.set_ylabel("users (log scale)")
    ax.set_title(title or "History length distribution")
    ax.grid(alpha=0.3, which="both", linewidth=0.4)
    return save_figure_atomic(fig, path)


def describe_dataset(path: str | os.PathLike, plot_path: str | os.PathLike | None = None, *,
                     headroom_len: int = 500, headroom_window: tuple[int, int] | None = None,
                     headroom_category: str | None = None) -> dict[str, Any]:
    """Summarise a dataset folder; with ``plot_path``, also write its history-length histogram.

    Returns a JSON-ready dict with keys ``users``, ``items``, ``events``, ``label_rate``, ``time_min``,
    ``time_max``, ``history_length`` (``p50``, ``p90``, ``p99``, ``max``, ``mean``), ``users_with_events``,
    ``cross_features``, ``inherent_features`` and ``plot`` (the PNG written, or ``None`` without
    ``plot_path``: the dataset folder is only read, never written to), and ``headroom``: the life-cycle
    headroom of :func:`twinv2.data.headroom.life_cycle_headroom` for a long sequence of ``headroom_len``
    over ``headroom_window`` (default: the test window of the default temporal split) by
    ``headroom_category`` (default: ``category_id`` or the first inherent categorical), or ``None`` when
    the dataset declares no inherent categorical column and none was asked for.
    """
    ds = load_dataset(path)
    h, m = ds.histories, ds.manifest
    lengths = h.lengths()
    p50, p90, p99 = (float(x) for x in np.percentile(lengths, [50, 90, 99])) if lengths.size else (0.0,) * 3
    plot = None if plot_path is None else plot_history_lengths(lengths, plot_path, title=m.name)
    return {
        "name": m.name,
        "source": m.source,
        "users": int(m.num_users),
        "users_with_events": int((lengths > 0).sum()),
        "items": int(m.num_items),
        "events": len(h.item_id),
        "label_rate": float(h.label.mean()) if len(h.label) else float("nan"),
        "time_min": int(m.time_min),
        "time_max": int(m.time_max),
        "history_length": {"p50": p50, "p90": p90, "p99": p99, "max": int(lengths.max(initial=0)),
                           "mean": float(lengths.mean()) if lengths.size else 0.0},
        "inherent_features": [c.name for c in m.item_categoricals + m.item_numerics],
        "cross_features": [c.name for c in m.cross_numerics],
        "plot": None if plot is None else str(plot),
        "headroom": _headroom(ds, headroom_len, headroom_window, headroom_category),
    }


def _headroom(ds: Dataset, long_len: int, window: tuple[int, int] | None,
              category: str | None) -> dict[str, Any] | None:
    """The headroom entry of the summary; skipped (``None``) on a dataset without categoricals unless asked."""
    from twinv2.data.headroom import life_cycle_headroom

    if category is None and not ds.manifest.item_categoricals:
        return None
    start, end = window if window is not None else (None, None)
    return life_cycle_headroom(ds, start, end, long_len=long_len, category=category)


def render_description(summary: dict[str, Any]):
    """A rich table of :func:`describe_dataset`'s output for the terminal."""
    from datetime import datetime, timezone

    from rich.table import Table

    def when(ts: int) -> str:
        return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")

    hl = summary["history_length"]
    table = Table(title=f"dataset {summary['name']} ({summary['source']})", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    rows = [
        ("users", f"{summary['users']:,} ({summary['users_with_events']:,} with events)"),
        ("items", f"{summary['items']:,}"),
        ("events", f"{summary['events']:,}"),
        ("label rate", f"{summary['label_rate']:.4f}"),
        ("time range", f"{when(summary['time_min'])} .. {when(summary['time_max'])} UTC"),
        ("history p50 / p90 / p99", f"{hl['p50']:,.0f} / {hl['p90']:,.0f} / {hl['p99']:,.0f}"),
        ("history max", f"{hl['max']:,}"),
        ("inherent features", ", ".join(summary["inherent_features"])),
        ("cross features", ", ".join(summary["cross_features"])),
        ("histogram", summary["plot"] or "not written (pass --plot PNG)"),
    ]
    rows += _headroom_rows(summary.get("headroom"), when)
    for k, v in rows:
        table.add_row(k, v)
    return table


def _headroom_rows(hr: dict[str, Any] | None, when: Callable[[int], str]) -> list[tuple[str, str]]:
    """Table rows of the headroom entry: the window, then the share and count of each bucket."""
    if hr is None:
        return [("life-cycle headroom", "n/a (no inherent categorical column)")]
    L, w = hr["long_len"], hr["window"]
    rows = [("life-cycle headroom", f"previous same-{hr['category']} behavior of {hr['positives']:,} "
                                    f"positives, L = {L:,}"),
            ("  window", f"{when(w['start_ts'])} .. {when(w['end_ts'])} UTC")]
    labels = {"within_50": f"within {hr['short_len']}", "within_L": f"within L = {L:,}",
              "beyond_L": "beyond L", "beyond_10L": "beyond 10 L", "never": "never"}
    for key, label in labels.items():
        share = hr["shares"][key]
        text = "n/a" if share is None else f"{100 * share:.1f}%"
        rows.append((f"  {label}", f"{text} ({hr['counts'][key]:,})"))
    return rows

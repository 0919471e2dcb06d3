"""Rich progress bars shared by compression, training, evaluation, the demo and the benchmarks."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["make_progress"]


def make_progress(console: Console | None = None, *, show: bool = True) -> Progress:
    """A progress bar with a description, ``done/total``, a free-text ``info`` field (running loss,
    throughput), elapsed and remaining time. ``show=False`` returns a silent one (tests, nested runs)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=30),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        disable=not show,
        transient=False,
    )

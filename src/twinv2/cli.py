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
            console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(code=2) from exc

    return wrapper


def print_json(obj: Any) -> None:
    """Print exactly one JSON object on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=float) + "\n")


# ---- data ------------------------------------------------------------------------------------------


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


def main() -> None:
    """Entry point of the ``twinv2`` console script."""
    app()


if __name__ == "__main__":
    main()

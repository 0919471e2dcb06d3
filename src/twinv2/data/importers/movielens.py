"""MovieLens importer: the ``ratings.csv`` layout (latest, latest-small, 20m, 25m, 32m), ml-100k
(``u.data``/``u.item``) and ml-1m / ml-10m (``ratings.dat``/``movies.dat``).

MovieLens has ratings, not plays, so (see ``docs/importers.md``):

- ``label = 1 if rating >= 4 else 0``;
- ``completion_ratio = rating / 5`` as an engagement proxy (the compression's completion groups become
  rating groups), ``duration = 1`` for every movie and ``play_time = completion_ratio * duration``;
- ``rating`` itself is kept as an extra cross numeric;
- the first listed genre is ``category_id`` and the second ``genre2_id`` (0 = none / unknown).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from twinv2.data.importers._assemble import EventBuffer, ImportReport, ItemMetadata, check_out_dir, write_import
from twinv2.data.importers._raw import BadRows, RawFile, RowChecks, TextFormat, read_progress
from twinv2.errors import DataValidationError

__all__ = ["GENRES_100K", "detect_movielens_layout", "import_movielens"]

# Genre flag columns of ml-100k's u.item, in file order (they are listed in the dataset's u.genre).
GENRES_100K = ("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
               "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
               "War", "Western")
NO_GENRE = "(no genres listed)"
LABEL_RULE = "1 if rating >= 4 else 0"
COMPLETION_RULE = ("MovieLens has no play time: completion_ratio = play_time = rating / 5 "
                   "(engagement proxy), duration = 1")
DURATION_RULE = "1 for every movie (MovieLens has no durations)"
_DAT_SEPARATOR = b"\x1f"  # '::' is rewritten to this one-byte separator before parsing

_LAYOUTS = {
    # layout: (ratings file, items file)
    "ratings.csv": ("ratings.csv", "movies.csv"),
    "100k": ("u.data", "u.item"),
    "1m": ("ratings.dat", "movies.dat"),
}


def detect_movielens_layout(src: str | os.PathLike) -> str:
    """Which MovieLens layout folder ``src`` holds: ``"ratings.csv"``, ``"100k"`` or ``"1m"``.

    Raises:
        DataValidationError: ``src`` is not a folder with ``ratings.csv``, ``u.data`` or ``ratings.dat``.
    """
    src = Path(src)
    for layout, (ratings, _) in _LAYOUTS.items():
        if (src / ratings).is_file():
            return layout
    raise DataValidationError(str(src), None, "a MovieLens folder holding ratings.csv (latest), u.data (ml-100k) "
                              "or ratings.dat (ml-1m/10m)", "none of them" if src.is_dir() else "no such folder")


def _rewrite_dat(path: Path) -> bytes:
    """The file's bytes with the two-character ``::`` separator replaced by one byte (line structure kept)."""
    return path.read_bytes().replace(b"::", _DAT_SEPARATOR)


def _ratings_file(src: Path, layout: str, skip_bad_rows: bool, tally: BadRows) -> tuple[RawFile, tuple[str, ...]]:
    """The ratings file and the names of its (user, item, rating, timestamp) columns."""
    if layout == "ratings.csv":
        cols = ("userId", "movieId", "rating", "timestamp")
        return RawFile(src / "ratings.csv", cols, text=TextFormat(), skip_bad_rows=skip_bad_rows, tally=tally), cols
    if layout == "100k":
        cols = ("user_id", "item_id", "rating", "timestamp")
        fmt = TextFormat(delimiter="\t", header=False, column_names=cols, quoting=False)
        return RawFile(src / "u.data", cols, text=fmt, skip_bad_rows=skip_bad_rows, tally=tally), cols
    cols = ("UserID", "MovieID", "Rating", "Timestamp")
    fmt = TextFormat(delimiter=_DAT_SEPARATOR.decode(), header=False, column_names=cols, quoting=False,
                     encoding="latin1")
    path = src / "ratings.dat"
    return RawFile(path, cols, text=fmt, data=_rewrite_dat(path), skip_bad_rows=skip_bad_rows, tally=tally), cols


def _first_two(genre_lists: list[list[str]]) -> tuple[pa.Array, pa.Array]:
    first = [g[0] if len(g) > 0 else "" for g in genre_lists]
    second = [g[1] if len(g) > 1 else "" for g in genre_lists]
    return pa.array(first, pa.string()), pa.array(second, pa.string())


def _read_movies(src: Path, layout: str, skip_bad_rows: bool, tally: BadRows) -> ItemMetadata | None:
    """Genres of each movie from the layout's item file, or ``None`` when the file is absent."""
    name = _LAYOUTS[layout][1]
    path = src / name
    if not path.is_file():
        return None
    if layout == "ratings.csv":
        id_col, cols = "movieId", ("movieId", "genres")
        raw = RawFile(path, cols, text=TextFormat(), skip_bad_rows=skip_bad_rows, tally=tally)
    elif layout == "100k":
        id_col = "movie_id"
        names = (id_col, "title", "release_date", "video_release_date", "imdb_url", *GENRES_100K)
        fmt = TextFormat(delimiter="|", header=False, column_names=names, quoting=False, encoding="latin1")
        raw = RawFile(path, (id_col, *GENRES_100K), text=fmt, skip_bad_rows=skip_bad_rows, tally=tally)
    else:
        id_col = "MovieID"
        fmt = TextFormat(delimiter=_DAT_SEPARATOR.decode(), header=False, column_names=(id_col, "Title", "Genres"),
                         quoting=False, encoding="latin1")
        raw = RawFile(path, (id_col, "Genres"), text=fmt, data=_rewrite_dat(path), skip_bad_rows=skip_bad_rows,
                      tally=tally)
    ids, rows, firsts, seconds = [], [], [], []
    for start, table in raw.batches():
        checks = RowChecks(raw, start, table)
        movie = checks.ids(id_col)
        if layout == "100k":
            flags = np.stack([checks.flags(g) for g in GENRES_100K[1:]], axis=1)  # [n, 18], "unknown" skipped
            genre_lists = [[GENRES_100K[1 + j] for j in np.flatnonzero(row)] for row in flags]
        else:
            text = table.column("genres" if layout == "ratings.csv" else "Genres").to_pylist()
            genre_lists = [[g.strip() for g in (t or "").split("|") if g.strip() and g.strip() != NO_GENRE]
                           for t in text]
        first, second = _first_two(genre_lists)
        keep = checks.keep()
        mask = pa.array(keep)
        ids.append(movie.filter(mask))
        rows.append(start + np.flatnonzero(keep))
        firsts.append(first.filter(mask))
        seconds.append(second.filter(mask))
    return ItemMetadata(
        source=raw, id_column=id_col, raw_item_id=pa.concat_arrays(ids), rows=np.concatenate(rows),
        features={"category_id": pa.concat_arrays(firsts), "genre2_id": pa.concat_arrays(seconds)},
        descriptions={"category_id": f"first genre listed in {name} (0 = none)",
                      "genre2_id": f"second genre listed in {name} (0 = none)"},
    )


def import_movielens(src: str | os.PathLike, out: str | os.PathLike, *, skip_bad_rows: bool = False,
                     overwrite: bool = False, progress: bool = False) -> ImportReport:
    """Import a MovieLens folder (layout detected from its files) into a dataset folder.

    Args:
        src: folder holding ``ratings.csv`` [+ ``movies.csv``], ``u.data`` [+ ``u.item``] or ``ratings.dat``
            [+ ``movies.dat``]. Without the movies file every movie's genres are 0 (unknown).
        out: dataset folder to write (atomically: a failed import leaves no folder behind).
        skip_bad_rows: drop malformed or invalid rows (counted in the report) instead of raising.
        overwrite: replace ``out`` if it is an existing dataset folder.
        progress: show a progress bar on stderr.
    Returns:
        An :class:`ImportReport`; events get ``label``, ``play_time``, ``completion_ratio`` and ``rating``.
    Raises:
        DataValidationError: naming the file, the column, the expectation and the first bad value.

    Example:
        >>> import_movielens("ml-latest-small", "data/ml").num_events  # doctest: +SKIP
        100836
    """
    started = time.perf_counter()
    src = Path(src)
    check_out_dir(out, overwrite)
    layout = detect_movielens_layout(src)
    tally = BadRows()
    ratings, (user_col, item_col, rating_col, ts_col) = _ratings_file(src, layout, skip_bad_rows, tally)
    movies = _read_movies(src, layout, skip_bad_rows, tally)
    warnings = [] if movies is not None else [f"no {_LAYOUTS[layout][1]} in {src}: genres are 0 (unknown)"]
    events = EventBuffer(cross_names=["rating"])
    with read_progress(progress, f"reading {ratings.path.name}", ratings.size()) as update:
        for start, table in ratings.batches(update):
            checks = RowChecks(ratings, start, table)
            user = checks.ids(user_col)
            item = checks.ids(item_col)
            rating = checks.numbers(rating_col, lo=0.5, hi=5.0, expected="a rating in [0.5, 5]")
            ts = checks.timestamps(ts_col, "s")
            engagement = (rating / 5.0).astype(np.float32)
            events.add(checks.keep(), user=user, item=item, ts=ts, label=(rating >= 4.0).astype(np.int8),
                       play_time=engagement, duration=np.ones(len(rating), np.float32), completion=engagement,
                       cross={"rating": rating})
    return write_import(
        out, events, importer="movielens", layout=layout, source=str(src), label_rule=LABEL_RULE,
        completion_rule=COMPLETION_RULE, duration_rule=DURATION_RULE,
        play_time_rule="= completion_ratio (MovieLens has no play time)", tally=tally, started=started,
        metadata=movies, cross_descriptions={"rating": "the MovieLens rating (0.5-5 stars)"}, warnings=warnings,
        progress=progress,
    )

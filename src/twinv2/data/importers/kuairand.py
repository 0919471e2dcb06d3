"""KuaiRand importer: interaction logs (``log_*.csv``) and, when present, ``video_features_basic*.csv``.

Log columns used: ``user_id``, ``video_id``, ``time_ms``, ``is_click``, ``play_time_ms``, ``duration_ms`` (and
``is_rand`` to leave out the random-exposure rows on request). Rules (see ``docs/importers.md``):

- ``ts = floor(time_ms / 1000)``, ``play_time = play_time_ms / 1000`` and item ``duration =
  duration_ms / 1000`` of the video's first logged event, all in seconds;
- ``completion_ratio = clip(play_time_ms / duration_ms, 0, 1)``, and 0 where ``duration_ms`` is 0 (counted);
- ``label = is_click``;
- with a video features file: ``author_id`` and ``category_id`` (the video's first tag).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twinv2.data.importers._assemble import EventBuffer, ImportReport, ItemMetadata, check_out_dir, write_import
from twinv2.data.importers._raw import BadRows, RawFile, RowChecks, TextFormat, read_progress
from twinv2.errors import DataValidationError

__all__ = ["find_kuairand_files", "import_kuairand"]

LOG_COLUMNS = ("user_id", "video_id", "time_ms", "is_click", "play_time_ms", "duration_ms")
FEATURE_COLUMNS = ("video_id", "author_id", "tag")
LABEL_RULE = "is_click"
COMPLETION_RULE = "clip(play_time_ms / duration_ms, 0, 1); 0 where duration_ms is 0"


def find_kuairand_files(src: str | os.PathLike) -> tuple[list[Path], Path | None]:
    """The log files (sorted by name) and the video features file (or None) of a KuaiRand path.

    ``src`` is one log file, or a folder holding ``log_*.csv`` and optionally ``video_features_basic*.csv``
    (KuaiRand's ``data/`` folder).
    """
    src = Path(src)
    if src.is_file():
        return [src], None
    if not src.is_dir():
        raise DataValidationError(str(src), None, "a KuaiRand log file or data folder", "no such file or folder")
    logs = sorted(src.glob("log_*.csv"))
    if not logs:
        raise DataValidationError(str(src), None, "a folder holding KuaiRand log files (log_*.csv)", "none")
    features = sorted(src.glob("video_features_basic*.csv"))
    return logs, (features[0] if features else None)


def _read_video_features(path: Path, skip_bad_rows: bool, tally: BadRows) -> ItemMetadata:
    raw = RawFile(path, FEATURE_COLUMNS, text=TextFormat(), skip_bad_rows=skip_bad_rows, tally=tally)
    ids, rows, authors, tags = [], [], [], []
    for start, table in raw.batches():
        checks = RowChecks(raw, start, table)
        video = checks.ids("video_id")
        keep = pa.array(checks.keep())
        author = checks.categories("author_id")
        # The tag field lists tag ids separated by commas; the first one is the category.
        first_tag = pc.struct_field(pc.extract_regex(checks.categories("tag"), r"^(?P<t>[^,;|\s]*)"), [0])
        ids.append(video.filter(keep))
        rows.append(start + np.flatnonzero(keep.to_numpy(zero_copy_only=False)))
        authors.append(author.filter(keep))
        tags.append(pc.fill_null(first_tag, "").filter(keep))
    return ItemMetadata(
        source=raw, id_column="video_id", raw_item_id=pa.concat_arrays(ids), rows=np.concatenate(rows),
        features={"author_id": pa.concat_arrays(authors), "category_id": pa.concat_arrays(tags)},
        descriptions={"author_id": f"author_id from {path.name} (0 = unknown)",
                      "category_id": f"first tag of the video in {path.name} (0 = none)"},
    )


def import_kuairand(src: str | os.PathLike, out: str | os.PathLike, *, video_features: str | os.PathLike | None = None,
                    include_random: bool = True, skip_bad_rows: bool = False, overwrite: bool = False,
                    progress: bool = False) -> ImportReport:
    """Import KuaiRand interaction logs into a dataset folder.

    Args:
        src: one ``log_*.csv`` file, or KuaiRand's data folder (all ``log_*.csv`` files, in name order).
        out: dataset folder to write (atomically).
        video_features: ``video_features_basic*.csv`` to take ``author_id``/``category_id`` from (default:
            the one in ``src`` when it is a folder; without it items have only ``duration``).
        include_random: keep the random-exposure rows (``is_rand == 1``); when false they are dropped,
            which needs the ``is_rand`` column.
        skip_bad_rows: drop malformed or invalid rows (counted) instead of raising.
        overwrite: replace ``out`` if it is an existing dataset folder.
        progress: show a progress bar on stderr.
    Returns:
        An :class:`ImportReport`.
    Raises:
        DataValidationError: naming the file, the column, the expectation and the first bad value.

    Example:
        >>> import_kuairand("KuaiRand-1K/data", "data/kuairand", progress=True)  # doctest: +SKIP
    """
    started = time.perf_counter()
    check_out_dir(out, overwrite)
    logs, found_features = find_kuairand_files(src)
    features_path = Path(video_features) if video_features is not None else found_features
    tally = BadRows()
    columns: Sequence[str] = LOG_COLUMNS if include_random else (*LOG_COLUMNS, "is_rand")
    raws = [RawFile(p, columns, text=TextFormat(), skip_bad_rows=skip_bad_rows, tally=tally) for p in logs]
    metadata = _read_video_features(features_path, skip_bad_rows, tally) if features_path is not None else None
    events = EventBuffer()
    zero_duration, random_dropped = 0, 0
    for raw in raws:
        with read_progress(progress, f"reading {raw.path.name}", raw.size()) as update:
            for start, table in raw.batches(update):
                checks = RowChecks(raw, start, table)
                user = checks.ids("user_id")
                video = checks.ids("video_id")
                ts = checks.timestamps("time_ms", "ms")
                click = checks.flags("is_click")
                play_ms = checks.numbers("play_time_ms", lo=0.0, expected="a non-negative play time in ms")
                duration_ms = checks.numbers("duration_ms", lo=0.0, expected="a non-negative duration in ms")
                is_rand = None if include_random else checks.flags("is_rand")
                keep = checks.keep()
                if is_rand is not None:
                    random_dropped += int((keep & (is_rand == 1)).sum())
                    keep &= is_rand == 0
                has_duration = duration_ms > 0
                zero_duration += int((keep & ~has_duration).sum())
                completion = np.where(has_duration, play_ms / np.where(has_duration, duration_ms, 1.0), 0.0)
                events.add(keep, user=user, item=video, ts=ts, label=click, play_time=play_ms / 1000.0,
                           duration=duration_ms / 1000.0, completion=np.clip(completion, 0.0, 1.0))
    warnings = []
    if zero_duration:
        warnings.append(f"{zero_duration} events have duration_ms = 0; their completion_ratio is 0")
    if features_path is None:
        warnings.append("no video features file: items have no author_id/category_id")
    layout = "logs + video features" if metadata is not None else "logs"
    return write_import(
        out, events, importer="kuairand", layout=layout, source=", ".join(str(p) for p in logs),
        label_rule=LABEL_RULE, completion_rule=COMPLETION_RULE,
        duration_rule="duration_ms / 1000 of the video's first logged event (seconds)",
        play_time_rule="play_time_ms / 1000 (seconds)", tally=tally,
        started=started, metadata=metadata, warnings=warnings, progress=progress,
        extra_notes={"random_exposures_dropped": random_dropped, "log_files": [p.name for p in logs]},
    )

"""Generic importer: any CSV/TSV or Parquet event log, with a column mapping.

The mapping says which source column holds the user, the item, the timestamp and the label, and optionally
play time, duration, completion ratio, item categoricals and extra per-event numerics. It comes from
command-line options, from a small YAML file (:func:`load_mapping`, strictly parsed), or both (options
win). See ``docs/importers.md`` for the rules and an example file.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from twinv2.data.importers._assemble import (
    RESERVED_NAMES,
    EventBuffer,
    ImportReport,
    check_out_dir,
    write_import,
)
from twinv2.data.importers._raw import BadRows, RawFile, RowChecks, TextFormat, read_progress
from twinv2.errors import ConfigError, DataValidationError

__all__ = ["TS_UNITS", "ColumnMapping", "import_csv", "load_mapping", "make_mapping"]

TS_UNITS = ("s", "ms", "iso")
PARQUET_SUFFIXES = (".parquet", ".pq")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ColumnMapping:
    """Which source columns hold what (the generic importer's configuration).

    Attributes:
        user_col, item_col, ts_col, label_col: required source columns.
        play_time_col, duration_col, completion_col: optional engagement columns (same time unit for play
            time and duration; completion is clipped to [0, 1]).
        category_col, author_col: optional item categoricals, written as ``category_id`` / ``author_id``.
        item_categorical_cols: more item categoricals, written under their own names.
        cross_numeric_cols: more per-event numeric features, written under their own names.
        ts_unit: ``"s"`` (integer seconds), ``"ms"`` (milliseconds) or ``"iso"`` (ISO 8601 date-times).
        label_threshold: ``None``: the label column holds 0/1; a number: ``label = value >= threshold``.
        delimiter: field separator of a text file (``None``: tab for ``.tsv``, else comma).
    """

    user_col: str
    item_col: str
    ts_col: str
    label_col: str
    play_time_col: str | None = None
    duration_col: str | None = None
    completion_col: str | None = None
    category_col: str | None = None
    author_col: str | None = None
    item_categorical_cols: tuple[str, ...] = ()
    cross_numeric_cols: tuple[str, ...] = ()
    ts_unit: str = "s"
    label_threshold: float | None = None
    delimiter: str | None = None

    def source_columns(self) -> list[str]:
        """Every source column the mapping reads, each once, in a fixed order."""
        cols = [self.user_col, self.item_col, self.ts_col, self.label_col, self.play_time_col,
                self.duration_col, self.completion_col, self.category_col, self.author_col,
                *self.item_categorical_cols, *self.cross_numeric_cols]
        return list(dict.fromkeys(c for c in cols if c is not None))

    def item_categoricals(self) -> dict[str, str]:
        """Output column name -> source column, for the item categoricals."""
        out = {}
        if self.category_col is not None:
            out["category_id"] = self.category_col
        if self.author_col is not None:
            out["author_id"] = self.author_col
        out.update({c: c for c in self.item_categorical_cols})
        return out


_REQUIRED = ("user_col", "item_col", "ts_col", "label_col")
_LISTS = ("item_categorical_cols", "cross_numeric_cols")
_KNOWN = tuple(f.name for f in fields(ColumnMapping))


def _check_value(key: str, value: Any, where: str) -> Any:
    """Type-check one mapping value; errors name ``where`` (file or 'option') and the key."""
    if key in _LISTS:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: key '{key}': expected a list of column names, found {value!r}")
        return tuple(value)
    if key == "label_threshold":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: key '{key}': expected a number, found {value!r}")
        return float(value)
    if key == "ts_unit":
        if value not in TS_UNITS:
            raise ConfigError(f"{where}: key '{key}': expected one of {', '.join(TS_UNITS)}, found {value!r}")
        return value
    if key == "delimiter":
        value = {"\\t": "\t", "tab": "\t"}.get(value, value) if isinstance(value, str) else value
        if not isinstance(value, str) or len(value) != 1:
            raise ConfigError(f"{where}: key '{key}': expected one character (or 'tab'), found {value!r}")
        return value
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: key '{key}': expected a column name, found {value!r}")
    return value


def load_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML column mapping strictly: unknown keys and wrong types raise naming the file and key.

    Returns the keys given in the file (type-checked); combine with options in :func:`make_mapping`.

    Example file::

        user_col: uid
        item_col: video
        ts_col: event_time
        ts_unit: iso
        label_col: clicked
        play_time_col: watch_seconds
        duration_col: video_seconds
        category_col: topic
        cross_numeric_cols: [position]
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such mapping file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: expected UTF-8 text, found the byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to column names, found {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if key not in _KNOWN:
            raise ConfigError(f"{path}: unknown key '{key}' (known keys: {', '.join(_KNOWN)})")
        out[key] = _check_value(key, value, str(path))
    return out


def make_mapping(from_file: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None, *,
                 file: str = "mapping") -> ColumnMapping:
    """Combine a loaded mapping file with command-line values (non-None overrides win) and check it.

    Raises:
        ConfigError: a required column is not given, an output name clashes, or the engagement columns
            cannot give a completion ratio (play time without duration or completion).
    """
    values = dict(from_file or {})
    for key, value in (overrides or {}).items():
        if key not in _KNOWN:
            raise ConfigError(f"option '{key}' is not a mapping key (known keys: {', '.join(_KNOWN)})")
        if value is None or (key in _LISTS and not value):
            continue
        values[key] = _check_value(key, value, "option")
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ConfigError(f"{file}: missing {', '.join(missing)} (give --{missing[0].replace('_', '-')} or put "
                          f"'{missing[0]}' in the --mapping file)")
    mapping = ColumnMapping(**values)
    if mapping.play_time_col and not (mapping.duration_col or mapping.completion_col):
        raise ConfigError(f"{file}: play_time_col needs duration_col or completion_col to give a completion "
                          "ratio")
    outputs = [*mapping.item_categoricals(), *mapping.cross_numeric_cols]
    for name in outputs:
        if name in RESERVED_NAMES or not _NAME_RE.match(name):
            raise ConfigError(f"{file}: output column '{name}' is reserved or not a plain identifier; rename the "
                              "source column or map it with category_col/author_col")
    if len(set(outputs)) != len(outputs):
        raise ConfigError(f"{file}: output columns {outputs} are not unique")
    return mapping


def import_csv(src: str | os.PathLike, out: str | os.PathLike, mapping: ColumnMapping, *,
               skip_bad_rows: bool = False, overwrite: bool = False, progress: bool = False) -> ImportReport:
    """Import one CSV/TSV or Parquet event file with a column mapping.

    Rules (see ``docs/importers.md``):

    - ``label``: the label column's 0/1 values, or ``value >= label_threshold``;
    - ``completion_ratio``: the completion column clipped to [0, 1]; else ``clip(play_time / duration)`` (0
      where duration is 0); else the label (an engagement proxy, as for data without play time);
    - ``duration``: the duration column, else 1; ``play_time``: the play time column, else
      ``completion_ratio * duration``.

    Args:
        src: the event file; ``.parquet``/``.pq`` are read as Parquet, anything else as delimited text with a
            header line.
        out: dataset folder to write (atomically).
        mapping: see :class:`ColumnMapping`.
        skip_bad_rows: drop malformed or invalid rows (counted) instead of raising.
        overwrite: replace ``out`` if it is an existing dataset folder.
        progress: show a progress bar on stderr.
    Returns:
        An :class:`ImportReport`.
    Raises:
        DataValidationError: naming the file, the column, the expectation and the first bad value.

    Example:
        >>> m = make_mapping(overrides={"user_col": "u", "item_col": "i", "ts_col": "t", "label_col": "y"})
        >>> import_csv("events.csv", "data/mine", m)  # doctest: +SKIP
    """
    started = time.perf_counter()
    src = Path(src)
    check_out_dir(out, overwrite)
    tally = BadRows()
    if src.suffix.lower() in PARQUET_SUFFIXES:
        text = None
    else:
        delimiter = mapping.delimiter or ("\t" if src.suffix.lower() == ".tsv" else ",")
        text = TextFormat(delimiter=delimiter)
    if not src.is_file():
        raise DataValidationError(str(src), None, "an existing CSV/TSV or Parquet file", "no such file")
    raw = RawFile(src, mapping.source_columns(), text=text, skip_bad_rows=skip_bad_rows, tally=tally)
    categoricals = mapping.item_categoricals()
    events = EventBuffer(cross_names=list(mapping.cross_numeric_cols), item_value_names=list(categoricals))
    with read_progress(progress, f"reading {src.name}", raw.size()) as update:
        for start, table in raw.batches(update):
            checks = RowChecks(raw, start, table)
            user = checks.ids(mapping.user_col)
            item = checks.ids(mapping.item_col)
            ts = checks.timestamps(mapping.ts_col, mapping.ts_unit)
            if mapping.label_threshold is None:
                label = checks.flags(mapping.label_col)
            else:
                label = (checks.numbers(mapping.label_col) >= mapping.label_threshold).astype(np.int8)
            n = len(label)
            duration = (checks.numbers(mapping.duration_col, lo=0.0, expected="a non-negative duration")
                        if mapping.duration_col else np.ones(n))
            play = (checks.numbers(mapping.play_time_col, lo=0.0, expected="a non-negative play time")
                    if mapping.play_time_col else None)
            if mapping.completion_col:
                completion = np.clip(checks.numbers(mapping.completion_col, lo=0.0,
                                                    expected="a non-negative completion ratio"), 0.0, 1.0)
            elif play is not None:
                positive = duration > 0
                completion = np.clip(np.where(positive, play / np.where(positive, duration, 1.0), 0.0), 0.0, 1.0)
            else:
                completion = label.astype(np.float64)
            if play is None:
                play = completion * duration
            cross = {c: checks.numbers(c) for c in mapping.cross_numeric_cols}
            item_values = {out_name: checks.categories(col) for out_name, col in categoricals.items()}
            events.add(checks.keep(), user=user, item=item, ts=ts, label=label, play_time=play,
                       duration=duration, completion=completion, cross=cross, item_values=item_values)
    label_rule = (f"{mapping.label_col} (0/1)" if mapping.label_threshold is None
                  else f"1 if {mapping.label_col} >= {mapping.label_threshold:g} else 0")
    if mapping.completion_col:
        completion_rule = f"clip({mapping.completion_col}, 0, 1)"
    elif mapping.play_time_col:
        completion_rule = f"clip({mapping.play_time_col} / {mapping.duration_col}, 0, 1); 0 where duration is 0"
    else:
        completion_rule = "no play time: completion_ratio = play_time = label (engagement proxy)"
    return write_import(
        out, events, importer="csv", layout="parquet" if text is None else "text", source=str(src),
        label_rule=label_rule, completion_rule=completion_rule,
        duration_rule=(f"{mapping.duration_col} of the item's first event" if mapping.duration_col
                       else "1 for every item (no duration column)"),
        play_time_rule=(mapping.play_time_col or "completion_ratio * duration"),
        tally=tally, started=started, progress=progress,
        item_value_descriptions={o: f"{c} of the item's first event" for o, c in categoricals.items()},
        cross_descriptions={c: f"source column {c}" for c in mapping.cross_numeric_cols},
        extra_notes={"mapping": {k: v for k, v in vars(mapping).items() if v not in (None, ())}},
    )

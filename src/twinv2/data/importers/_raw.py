"""Reading raw input files in batches and checking every value at the boundary.

Every importer reads its files through :class:`RawFile` (CSV/TSV/``::``-separated text, or Parquet) and checks
each column of each batch through :class:`RowChecks`. A problem is reported as a
:class:`~twinv2.errors.DataValidationError` naming the file, the column, what was expected and the first bad
value with its location (``line N`` of a text file, header included; ``row N`` of a Parquet file).

With ``skip_bad_rows=True`` a bad row is dropped instead and counted in a :class:`BadRows` tally, per reason
with the first example. Blank lines are ignored (and counted) in both modes. Missing columns and duplicate
ids in an item file are always errors.

Text files are read with every column as a string, so that a value that does not parse is reported as
written in the file, then converted with Arrow's vectorised casts; the slow, per-value path only runs on a
batch where the fast cast failed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from twinv2.errors import DataValidationError

__all__ = ["BadRows", "RawFile", "RowChecks", "TextFormat", "read_progress", "stage"]

# Text that stands for a missing id (pandas writes NaN as an empty field or as "nan").
_MISSING_TEXT = ["", "nan", "NaN", "NAN", "null", "NULL", "None"]
_INT_RE = r"^[+-]?\d{1,18}$"
_FLOAT_RE = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
# Seconds beyond this (year ~2500) are treated as unparsable rather than silently overflowing later.
_MAX_SECONDS = 1 << 34
_BLOCK_SIZE = 16 << 20
_PARQUET_BATCH = 1 << 20


@dataclass(frozen=True)
class TextFormat:
    """How a delimited text file is laid out.

    Attributes:
        delimiter: one character separating fields.
        header: whether the first line names the columns.
        column_names: names of the fields of a headerless file (used in messages as ``'name' (field k)``).
        quoting: whether ``"`` quotes fields (off for MovieLens ``::``/``|`` files, whose titles hold quotes).
        encoding: text encoding of the file (Arrow transcodes it to UTF-8).
    """

    delimiter: str = ","
    header: bool = True
    column_names: tuple[str, ...] | None = None
    quoting: bool = True
    encoding: str = "utf8"


@dataclass
class BadRows:
    """Tally of rows dropped with ``skip_bad_rows=True`` (and of blank lines, always ignored)."""

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, str] = field(default_factory=dict)
    blank_lines: int = 0

    @property
    def total(self) -> int:
        """Number of dropped rows (blank lines not included)."""
        return sum(self.counts.values())

    def add(self, reason: str, count: int, example: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + count
        self.examples.setdefault(reason, example)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: total, blank lines, and per reason the count and the first example."""
        return {"total": self.total, "blank_lines": self.blank_lines,
                "by_reason": {r: {"count": n, "first": self.examples[r]} for r, n in self.counts.items()}}


class _CountingFile:
    """A read-only binary file that counts the bytes handed to Arrow, for the progress bar."""

    def __init__(self, fh: Any):
        self._fh, self.bytes_read, self.closed = fh, 0, False

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self.bytes_read += len(data)
        return data

    def close(self) -> None:
        self.closed = True
        self._fh.close()


@contextlib.contextmanager
def read_progress(enabled: bool, description: str, total: int) -> Iterator[Any]:
    """A rich progress bar over ``total`` bytes on stderr; a no-op when not ``enabled`` or not a terminal.

    Yields a callable ``update(completed)``.
    """
    from rich.console import Console

    console = Console(stderr=True)
    if not (enabled and console.is_terminal):  # a bar in a log file is noise
        yield lambda completed: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task(description, total=max(total, 1))
        yield lambda completed: bar.update(task, completed=completed)


@contextlib.contextmanager
def stage(enabled: bool, description: str) -> Iterator[None]:
    """A rich spinner with ``description`` on stderr while the block runs (no-op when not ``enabled``)."""
    if not enabled:
        yield
        return
    from rich.console import Console

    with Console(stderr=True).status(description):
        yield


class RawFile:
    """One input file, read in batches of the requested columns.

    Text files come as string columns (parsed by :class:`RowChecks`), Parquet files with their own types.
    Malformed text rows (wrong number of fields) raise with their line number, or are dropped and counted
    when ``skip_bad_rows`` is set.

    Args:
        path: the file (used in messages as given).
        columns: the columns the importer needs; a missing one raises naming it.
        text: layout of a text file; ``None`` means Parquet.
        data: the file's content already in memory (used for files rewritten before parsing, such as
            ``::``-separated MovieLens files); ``path`` is then only used in messages.
        skip_bad_rows: drop bad rows instead of raising.
        tally: where dropped rows are counted (shared by all files of one import).
    """

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], *, text: TextFormat | None,
                 data: bytes | None = None, skip_bad_rows: bool = False, tally: BadRows | None = None):
        self.path = Path(path)
        self.name = str(path)
        self.columns = list(columns)
        self.text = text
        self.data = data
        self.skip_bad_rows = skip_bad_rows
        self.tally = tally if tally is not None else BadRows()
        self._invalid_lines: list[int] = []  # physical line numbers of malformed rows, ascending
        self._invalid_reported = 0
        if data is None and not self.path.is_file():
            raise DataValidationError(self.name, None, "an existing file", "no such file")
        self.available = self._available_columns()
        for name in self.columns:
            if name not in self.available:
                shown = ", ".join(self.available[:30])
                raise DataValidationError(self.name, name, "a column with this name",
                                          f"no such column (columns: {shown})")

    # -- naming and locations -------------------------------------------------------------------------
    def column_label(self, name: str) -> str:
        """How a column is named in messages: its header name, or ``name (field k)`` in a headerless file."""
        if self.text is not None and not self.text.header and self.text.column_names:
            return f"{name} (field {self.text.column_names.index(name) + 1})"
        return name

    def where(self, data_row: int) -> str:
        """Location of 0-based data row ``data_row``: ``line N`` (1-based, header included) or ``row N``."""
        if self.text is None:
            return f"row {data_row + 1}"
        header = 1 if self.text.header else 0
        # Data rows fill every physical line except the header and the malformed (skipped) lines, so walk
        # forward past the malformed lines that precede the target. Assumes one record per line.
        invalid = np.asarray(self._invalid_lines, dtype=np.int64)
        line = header + 1 + data_row
        while True:
            new_line = header + 1 + data_row + int(np.searchsorted(invalid, line, side="right"))
            if new_line == line:
                return f"line {line}"
            line = new_line

    # -- reading --------------------------------------------------------------------------------------
    def _available_columns(self) -> list[str]:
        if self.text is None:
            try:
                return list(pq.ParquetFile(self.path).schema_arrow.names)
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataValidationError(self.name, None, "a readable Parquet file",
                                          str(exc).splitlines()[0]) from exc
        if not self.text.header:
            return list(self.text.column_names or ())
        first = self._first_line()
        if not first.strip():
            raise DataValidationError(self.name, None, "a header line naming the columns", "an empty first line")
        reader = csv.reader([first], delimiter=self.text.delimiter,
                            quotechar='"' if self.text.quoting else None,
                            quoting=csv.QUOTE_MINIMAL if self.text.quoting else csv.QUOTE_NONE)
        return [name.strip() for name in next(reader)]

    def _first_line(self) -> str:
        assert self.text is not None
        if self.data is not None:
            raw = self.data[:1 << 16]
        else:
            with self.path.open("rb") as fh:
                raw = fh.read(1 << 16)
        line = raw.split(b"\n", 1)[0].rstrip(b"\r")
        return line.decode(self.text.encoding, errors="replace").lstrip("\ufeff")

    def _on_invalid(self, row: Any) -> str:
        # Called by Arrow (single-threaded, so row.number is the physical line) for a row with the wrong
        # number of fields. Exceptions do not cross Arrow's callback, so record and raise after the batch.
        self._invalid_lines.append(int(row.number) if row.number is not None else -1)
        reason = f"{self.name}: {row.expected_columns} fields per line"
        example = f"{row.actual_columns} fields at line {row.number}: {row.text[:200]!r}"
        if self.skip_bad_rows:
            self.tally.add(reason, 1, example)
        elif self._invalid_reported == 0:
            self._first_invalid = (row.expected_columns, example)
        self._invalid_reported += 1
        return "skip"

    def _raise_if_malformed(self) -> None:
        if self._invalid_reported and not self.skip_bad_rows:
            expected, example = self._first_invalid
            raise DataValidationError(self.name, None, f"{expected} fields per line "
                                      "(or --skip-bad-rows to drop malformed rows)", example)

    def batches(self, progress: Any = None) -> Iterator[tuple[int, pa.Table]]:
        """Yield ``(first_data_row, table)`` batches of the requested columns, in file order.

        ``progress`` (optional) is called with the number of bytes read so far.
        """
        if self.text is None:
            yield from self._parquet_batches(progress)
        else:
            yield from self._text_batches(progress)

    def _parquet_batches(self, progress: Any) -> Iterator[tuple[int, pa.Table]]:
        pf = pq.ParquetFile(self.path)
        start, total_rows = 0, max(pf.metadata.num_rows, 1)
        size = self.path.stat().st_size
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=self.columns):
            table = pa.Table.from_batches([batch])
            yield start, table
            start += table.num_rows
            if progress is not None:
                progress(int(size * start / total_rows))

    def _text_batches(self, progress: Any) -> Iterator[tuple[int, pa.Table]]:
        assert self.text is not None
        fmt = self.text
        read_opts = pa_csv.ReadOptions(
            use_threads=False,  # single-threaded parsing reports physical line numbers of malformed rows
            block_size=_BLOCK_SIZE, encoding=fmt.encoding,
            column_names=None if fmt.header else list(fmt.column_names or ()),
        )
        parse_opts = pa_csv.ParseOptions(delimiter=fmt.delimiter, quote_char='"' if fmt.quoting else False,
                                         ignore_empty_lines=False, invalid_row_handler=self._on_invalid)
        convert_opts = pa_csv.ConvertOptions(column_types={c: pa.string() for c in self.columns},
                                             include_columns=self.columns, strings_can_be_null=False,
                                             quoted_strings_can_be_null=False)
        source = io.BytesIO(self.data) if self.data is not None else self.path.open("rb")
        counting = _CountingFile(source)
        try:
            reader = pa_csv.open_csv(pa.PythonFile(counting, mode="r"), read_options=read_opts,
                                     parse_options=parse_opts, convert_options=convert_opts)
            start = 0
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                except pa.ArrowInvalid as exc:
                    raise DataValidationError(self.name, None, "a well-formed delimited text file",
                                              str(exc).splitlines()[0]) from exc
                self._raise_if_malformed()
                table = pa.Table.from_batches([batch])
                yield start, table
                start += table.num_rows
                if progress is not None:
                    progress(counting.bytes_read)
            self._raise_if_malformed()
        except pa.ArrowInvalid as exc:  # raised while reading the first block (e.g. undecodable text)
            raise DataValidationError(self.name, None, "a well-formed delimited text file",
                                      str(exc).splitlines()[0]) from exc
        finally:
            source.close()

    def size(self) -> int:
        """Bytes of input (for progress bars)."""
        return len(self.data) if self.data is not None else self.path.stat().st_size


def _as_strings(arr: pa.Array) -> pa.Array:
    """Trimmed strings with nulls as empty strings (no input validation)."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return pc.utf8_trim_whitespace(pc.fill_null(arr, ""))


def _parse_float_text(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """float64 values and a bad mask for trimmed strings (unparsable -> bad, value 0)."""
    try:
        values = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
        return values, ~np.isfinite(values)
    except pa.ArrowInvalid:
        ok = pc.match_substring_regex(text, _FLOAT_RE).to_numpy(zero_copy_only=False)
        values = pc.cast(pc.if_else(pa.array(ok), text, "0"), pa.float64()).to_numpy(zero_copy_only=False)
        bad = ~ok | ~np.isfinite(values)
        return np.where(bad, 0.0, values), bad


def _parse_int_text(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """int64 values and a bad mask for trimmed strings holding integers (decimals are bad)."""
    try:
        return pc.cast(text, pa.int64()).to_numpy(zero_copy_only=False), np.zeros(len(text), bool)
    except pa.ArrowInvalid:
        ok = pc.match_substring_regex(text, _INT_RE).to_numpy(zero_copy_only=False)
        values = pc.cast(pc.if_else(pa.array(ok), text, "0"), pa.int64()).to_numpy(zero_copy_only=False)
        return np.where(ok, values, 0), ~ok


class RowChecks:
    """Parses and checks the columns of one batch; bad rows raise, or are dropped with ``skip_bad_rows``.

    Each accessor returns a full-length array (bad entries hold a filler value) and records which rows are
    bad; :meth:`keep` returns the mask of rows to keep. Blank lines (all requested fields empty in a text
    file) are dropped silently and counted.

    Example:
        >>> checks = RowChecks(raw_file, start, table)  # doctest: +SKIP
        >>> users = checks.ids("userId"); ts = checks.timestamps("timestamp", "s")  # doctest: +SKIP
        >>> keep = checks.keep()  # doctest: +SKIP
    """

    def __init__(self, source: RawFile, first_row: int, table: pa.Table):
        self.source, self.first_row, self.table = source, first_row, table
        self.n = table.num_rows
        self._bad = np.zeros(self.n, dtype=bool)
        self._blank = np.zeros(self.n, dtype=bool)
        if source.text is not None and self.n:
            blank = np.ones(self.n, dtype=bool)
            for name in table.column_names:  # text columns are non-null strings
                blank &= pc.equal(self._raw(name), "").to_numpy(zero_copy_only=False)
            self._blank = blank
            source.tally.blank_lines += int(blank.sum())

    def _raw(self, name: str) -> pa.Array:
        return self.table.column(name).combine_chunks()

    # -- recording --------------------------------------------------------------------------------------
    def flag(self, bad: np.ndarray, column: str, expected: str, shown: pa.Array | np.ndarray) -> None:
        """Record rows where ``bad`` holds: raise on the first (strict) or count them (skip mode)."""
        bad = bad & ~self._blank
        if not bad.any():
            return
        i = int(np.argmax(bad))
        value = shown[i]
        value = value.as_py() if isinstance(value, pa.Scalar) else value
        value = value.item() if isinstance(value, np.generic) else value
        shown_value = "an empty value" if value in ("", None) else repr(value)
        found = f"{shown_value} at {self.source.where(self.first_row + i)}"
        label = self.source.column_label(column)
        if not self.source.skip_bad_rows:
            raise DataValidationError(self.source.name, label, expected, found)
        self.source.tally.add(f"{self.source.name}: column '{label}': expected {expected}", int(bad.sum()), found)
        self._bad |= bad

    def keep(self) -> np.ndarray:
        """bool ``[n]``: rows that are neither blank nor bad."""
        return ~(self._bad | self._blank)

    # -- typed accessors --------------------------------------------------------------------------------
    def ids(self, name: str) -> pa.Array:
        """Non-empty id strings (trimmed); integer Parquet ids become their decimal text."""
        raw = self._raw(name)
        if pa.types.is_floating(raw.type):  # integer ids stored as float (a pandas column with NaN)
            values = raw.to_numpy(zero_copy_only=False)
            bad = ~np.isfinite(values) | (np.floor(values) != values)
            self.flag(bad, name, "an integer or text id", raw)
            raw = pa.array(np.where(bad, 0, values).astype(np.int64))
        text = _as_strings(raw)
        missing = pc.is_in(text, value_set=pa.array(_MISSING_TEXT)).to_numpy(zero_copy_only=False)
        self.flag(missing, name, "a non-empty id", text)
        return text

    def categories(self, name: str) -> pa.Array:
        """Trimmed category text; empty or NaN-like values become "" (unknown, code 0). Never bad."""
        text = _as_strings(self._raw(name))
        missing = pc.is_in(text, value_set=pa.array(_MISSING_TEXT))
        return pc.if_else(missing, "", text)

    def numbers(self, name: str, *, lo: float | None = None, hi: float | None = None,
                expected: str | None = None) -> np.ndarray:
        """float64 values; non-numbers, NaN/inf and values outside ``[lo, hi]`` are bad."""
        raw = self._raw(name)
        if pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type) or pa.types.is_dictionary(raw.type):
            shown = _as_strings(raw)
            values, bad = _parse_float_text(shown)
        elif pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type) or pa.types.is_boolean(raw.type):
            shown = raw
            values = pc.cast(pc.fill_null(pc.cast(raw, pa.float64()), np.nan), pa.float64()).to_numpy()
            bad = ~np.isfinite(values)
        else:
            raise DataValidationError(self.source.name, name, "a numeric column", str(raw.type))
        if expected is None:
            expected = "a number" if lo is None and hi is None else (
                f"a number >= {lo:g}" if hi is None else f"a number in [{lo:g}, {hi:g}]")
        self.flag(bad, name, expected, shown)
        out_of_range = np.zeros(self.n, dtype=bool)
        if lo is not None:
            out_of_range |= values < lo
        if hi is not None:
            out_of_range |= values > hi
        self.flag(out_of_range & ~bad, name, expected, shown)
        return np.where(bad | out_of_range, 0.0, values)

    def flags(self, name: str) -> np.ndarray:
        """int8 0/1 values (``0``, ``1``, ``0.0``, ``1.0``, true/false in Parquet); anything else is bad."""
        values = self.numbers(name, expected="0 or 1")
        raw = self._raw(name)
        shown = _as_strings(raw) if not pa.types.is_boolean(raw.type) else raw
        self.flag((values != 0) & (values != 1), name, "0 or 1", shown)
        return (values == 1).astype(np.int8)

    def choice(self, name: str, codes: dict[str, int]) -> np.ndarray:
        """int64 code of each value from ``codes`` (exact text match); other values are bad."""
        text = _as_strings(self._raw(name))
        keys = list(codes)
        pos = pc.index_in(text, value_set=pa.array(keys)).to_numpy(zero_copy_only=False)
        bad = np.isnan(pos) if pos.dtype.kind == "f" else np.zeros(self.n, dtype=bool)
        self.flag(bad, name, "one of " + ", ".join(keys), text)
        lookup = np.array([codes[k] for k in keys], dtype=np.int64)
        return lookup[np.where(bad, 0, np.nan_to_num(pos)).astype(np.int64)]

    def timestamps(self, name: str, unit: str) -> np.ndarray:
        """int64 seconds since 1970-01-01 UTC.

        Args:
            unit: ``"s"`` (integer seconds; decimals are floored), ``"ms"`` (milliseconds, floored to
                seconds) or ``"iso"`` (ISO 8601 date-times; without an offset they are read as UTC).
        """
        raw = self._raw(name)
        is_text = pa.types.is_string(raw.type) or pa.types.is_large_string(raw.type) or pa.types.is_dictionary(
            raw.type)
        if pa.types.is_timestamp(raw.type) or pa.types.is_date(raw.type):
            if pa.types.is_timestamp(raw.type):  # ticks of the column's unit, floored to seconds
                per_second = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}[raw.type.unit]
                ticks = pc.cast(raw, pa.int64())
            else:
                per_second = 1000
                ticks = pc.cast(pc.cast(raw, pa.date64()), pa.int64())
            bad = pc.is_null(ticks).to_numpy(zero_copy_only=False)
            values = np.floor_divide(pc.fill_null(ticks, 0).to_numpy(zero_copy_only=False), per_second)
            shown: Any = raw
            expected = "a date-time"
        elif unit == "iso":
            shown = _as_strings(raw) if is_text else pc.cast(raw, pa.string())
            values, bad = _parse_iso(shown)
            expected = "an ISO 8601 date-time such as 2017-11-25T08:30:00 (UTC unless an offset is given)"
        elif unit in ("s", "ms"):
            what = "seconds" if unit == "s" else "milliseconds"
            expected = f"integer {what} since 1970-01-01"
            if is_text:
                shown = _as_strings(raw)
                values, bad = _parse_int_text(shown)
                if bad.any():  # decimals such as "964982703.0" are accepted and floored
                    as_float, float_bad = _parse_float_text(shown)
                    fixable = bad & ~float_bad & (np.abs(as_float) < 2.0 ** 62)
                    values = np.where(fixable, np.floor(as_float), values).astype(np.int64)
                    bad &= ~fixable
            elif pa.types.is_integer(raw.type) or pa.types.is_floating(raw.type):
                shown = raw
                as_float = pc.fill_null(pc.cast(raw, pa.float64()), np.nan).to_numpy(zero_copy_only=False)
                bad = ~np.isfinite(as_float) | (np.abs(as_float) >= 2.0 ** 62)
                if pa.types.is_integer(raw.type):
                    values = pc.fill_null(raw, 0).to_numpy(zero_copy_only=False).astype(np.int64)
                else:
                    values = np.floor(np.where(bad, 0, as_float)).astype(np.int64)
            else:
                raise DataValidationError(self.source.name, name, expected, f"a column of type {raw.type}")
            if unit == "ms":
                values = np.floor_divide(values, 1000)
        else:
            raise ValueError(f"unknown timestamp unit {unit!r}")
        if unit != "iso" and is_text and bad.any() and _looks_like_date(shown, bad):
            expected += " (dates need the 'iso' timestamp unit)"
        self.flag(bad, name, expected, shown)
        values = np.where(bad, 0, values)
        self.flag((values < 0) | (values >= _MAX_SECONDS), name,
                  "a time between 1970-01-01 and 2514 (non-negative seconds)", shown)
        return values.astype(np.int64)


def _looks_like_date(text: pa.Array, bad: np.ndarray) -> bool:
    """Whether the first bad value looks like a date (to suggest the 'iso' unit in the message)."""
    value = text[int(np.argmax(bad))].as_py() or ""
    return len(value) >= 8 and value[:4].isdigit() and value[4:5] in ("-", "/")


def _parse_iso(text: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """int64 seconds (floored) and a bad mask for ISO 8601 strings; naive times are taken as UTC."""
    import pandas as pd

    parsed = pd.to_datetime(pd.Series(text.to_numpy(zero_copy_only=False), dtype=object), format="ISO8601",
                            utc=True, errors="coerce")
    bad = parsed.isna().to_numpy()
    epoch = pd.Timestamp(0, tz="UTC")
    seconds = ((parsed - epoch) // pd.Timedelta(seconds=1)).fillna(0).to_numpy(dtype=np.int64)
    return np.where(bad, 0, seconds), bad

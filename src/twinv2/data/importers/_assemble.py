"""From parsed raw events to a dataset folder: dense ids, item table, stable sort, atomic write.

Shared by every importer. Rules (also in ``docs/importers.md``):

- users get ids ``0..U-1`` and items ``1..I`` (0 is padding) in the order of their **sorted raw id**:
  numerically when every raw id of that kind is an integer, otherwise as text. The raw ids are kept
  (``raw_user_id`` in ``users.parquet``, ``raw_item_id`` in ``items.parquet``);
- the item table holds the items that have at least one event; an item's ``duration`` and its per-event
  categorical values (e.g. the Taobao category) are taken from its **first event in file order**;
- categorical values are coded ``1..C`` in sorted order of the raw value (``0`` = unknown / missing); the
  code -> raw value lists are written to ``vocabularies.json``;
- events are sorted by ``(user_id, ts)`` with a stable sort, so events with the same timestamp keep their
  order in the input (files in the order given, rows in file order).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from twinv2.data.importers._raw import BadRows, RawFile, stage
from twinv2.data.schema import ColumnSpec
from twinv2.data.store import DatasetWriter, check_out_dir
from twinv2.errors import DataValidationError

__all__ = ["EventBuffer", "ImportReport", "ItemMetadata", "check_out_dir", "write_import"]


VOCAB_FILE = "vocabularies.json"
RESERVED_NAMES = frozenset({"user_id", "item_id", "ts", "label", "play_time", "completion_ratio", "duration",
                            "raw_item_id", "raw_user_id"})


@dataclass
class ImportReport:
    """What an import did.

    Attributes:
        out: the dataset folder written.
        importer: ``movielens``, ``taobao``, ``kuairand`` or ``csv``; layout: the file layout recognised.
        num_events / num_users / num_items: sizes of the dataset written.
        skipped_rows: total rows dropped with ``skip_bad_rows`` (0 in strict mode).
        bad_rows: per reason the count and the first example (see :class:`BadRows`).
        warnings: counted degenerate cases (items without metadata, conflicting categories, ...).
        seconds: wall time of the import.
    """

    out: Path
    importer: str
    layout: str
    num_events: int
    num_users: int
    num_items: int
    skipped_rows: int
    bad_rows: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for the command line."""
        line = (f"imported {self.importer} ({self.layout}): {self.num_events} events, {self.num_users} users, "
                f"{self.num_items} items in {self.seconds:.1f} s -> {self.out}")
        if self.skipped_rows:
            line += f"; skipped {self.skipped_rows} bad rows"
        return line


class EventBuffer:
    """Parsed events in input order, accumulated batch by batch (raw ids as strings, values as arrays).

    Args:
        cross_names: extra per-event numeric columns (beyond play_time and completion_ratio).
        item_value_names: per-event raw values of item categoricals (the item keeps its first event's value).
    """

    def __init__(self, cross_names: Sequence[str] = (), item_value_names: Sequence[str] = ()):
        self.cross_names, self.item_value_names = list(cross_names), list(item_value_names)
        self.users: list[IdChunk] = []
        self.items: list[IdChunk] = []
        self.ts: list[np.ndarray] = []
        self.label: list[np.ndarray] = []
        self.play_time: list[np.ndarray] = []
        self.duration: list[np.ndarray] = []
        self.completion: list[np.ndarray] = []
        self.cross: dict[str, list[np.ndarray]] = {n: [] for n in self.cross_names}
        self.item_values: dict[str, list[IdChunk]] = {n: [] for n in self.item_value_names}

    def __len__(self) -> int:
        return sum(len(t) for t in self.ts)

    def add(self, keep: np.ndarray, *, user: pa.Array, item: pa.Array, ts: np.ndarray, label: np.ndarray,
            play_time: np.ndarray, duration: np.ndarray, completion: np.ndarray,
            cross: dict[str, np.ndarray] | None = None, item_values: dict[str, pa.Array] | None = None) -> None:
        """Append the rows of one batch where ``keep`` holds (all arrays ``[n]``, same row order)."""
        mask = pa.array(keep)
        self.users.append(compact_ids(pc.filter(user, mask)))
        self.items.append(compact_ids(pc.filter(item, mask)))
        self.ts.append(np.asarray(ts, dtype=np.int64)[keep])
        self.label.append(np.asarray(label, dtype=np.int8)[keep])
        self.play_time.append(np.asarray(play_time, dtype=np.float32)[keep])
        self.duration.append(np.asarray(duration, dtype=np.float32)[keep])
        self.completion.append(np.asarray(completion, dtype=np.float32)[keep])
        for name in self.cross_names:
            self.cross[name].append(np.asarray((cross or {})[name], dtype=np.float32)[keep])
        for name in self.item_value_names:
            self.item_values[name].append(compact_ids(pc.filter((item_values or {})[name], mask)))


@dataclass
class ItemMetadata:
    """Item features read from an item file (MovieLens movies, KuaiRand video features).

    Attributes:
        source: the item file (for messages about duplicates).
        id_column: the id column's name in that file.
        raw_item_id: string ``[M]`` ids as written in the file.
        rows: int64 ``[M]`` 0-based data row of each entry (for messages).
        features: output column name -> string ``[M]`` raw categorical values ("" = unknown).
        descriptions: output column name -> description for the manifest.
    """

    source: RawFile
    id_column: str
    raw_item_id: pa.Array
    rows: np.ndarray
    features: dict[str, pa.Array]
    descriptions: dict[str, str]

    def check_unique(self) -> None:
        """Raise naming the file, the column and the first repeated id with both locations."""
        ids = dense_codes([self.raw_item_id])
        counts = np.bincount(ids.codes, minlength=len(ids.raw))
        if (counts > 1).any():
            # report the repeated id whose second occurrence comes first in the file
            seen_before = np.ones(len(ids.codes), dtype=bool)
            seen_before[ids.first] = False
            second = int(np.argmax(seen_before))
            dup_code = int(ids.codes[second])
            where = (int(ids.first[dup_code]), second)
            raise DataValidationError(
                self.source.name, self.source.column_label(self.id_column), "unique item ids",
                f"{int((counts > 1).sum())} repeated ids, e.g. {ids.raw[dup_code].as_py()!r} at "
                f"{self.source.where(int(self.rows[where[0]]))} and {self.source.where(int(self.rows[where[1]]))}")


IdChunk = np.ndarray | pa.Array  # int64 numpy for canonical integer ids, else strings


def _as_int64(text: pa.Array) -> pa.Array | None:
    """``text`` cast to int64, or None when some value is not an integer (Arrow cannot cast it)."""
    try:
        return pc.cast(text, pa.int64())
    except (pa.ArrowInvalid, pa.lib.ArrowNotImplementedError):  # non-numeric text / uncastable type
        return None


def compact_ids(text: pa.Array) -> IdChunk:
    """int64 numpy ``[n]`` when every id is the canonical text of an integer, else the strings unchanged.

    Canonical means the integer prints back to exactly the same text, so "7" and "007" (different raw ids)
    never merge. Integer ids hash and sort far faster than strings on large logs.
    """
    as_int = _as_int64(text)
    if as_int is None:
        return text
    if len(text) and not pc.all(pc.equal(pc.cast(as_int, pa.string()), pc.cast(text, pa.string()))).as_py():
        return text
    return as_int.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


@dataclass
class DenseCodes:
    """Dense codes of a column of ids.

    Attributes:
        codes: int64 ``[n]`` in ``0..K-1``, numbered in sorted raw-id order.
        raw: string ``[K]``: the raw id of each code.
        first: int64 ``[K]``: position of each id's first occurrence in the input.
    """

    codes: np.ndarray
    raw: pa.Array
    first: np.ndarray


def _text_order(uniques: pa.Array) -> np.ndarray:
    """Order of unique strings: numeric when all are integers (text breaks ties), else text order."""
    as_int = _as_int64(uniques)
    if as_int is None:
        return pc.sort_indices(uniques).to_numpy()
    # "7" and "007" are different raw ids with the same number: the text breaks the tie.
    table = pa.table({"n": as_int, "s": uniques})
    return pc.sort_indices(table, sort_keys=[("n", "ascending"), ("s", "ascending")]).to_numpy()


def dense_codes(chunks: Sequence[IdChunk]) -> DenseCodes:
    """Code ids densely in sorted raw-id order (see :class:`DenseCodes`; no input validation).

    Args:
        chunks: pieces of one id column in input order, each from :func:`compact_ids` (or strings).
    """
    import pandas as pd

    if all(isinstance(c, np.ndarray) for c in chunks):
        values = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        seen_codes, uniques = pd.factorize(values, sort=False)  # codes in order of first appearance
        order = np.argsort(uniques, kind="stable")
        raw = pc.cast(pa.array(uniques[order]), pa.string())
    else:
        # large_string: the concatenated text of a big log can pass the 2 GiB offsets of plain strings
        text = pa.concat_arrays([pc.cast(pa.array(c) if isinstance(c, np.ndarray) else c, pa.large_string())
                                 for c in chunks])
        encoded = pc.dictionary_encode(text)  # dictionary in order of first appearance
        seen_codes = encoded.indices.to_numpy(zero_copy_only=False)
        uniques = pc.cast(encoded.dictionary, pa.string())
        order = _text_order(uniques)
        raw = uniques.take(pa.array(order))
    seen_codes = np.asarray(seen_codes, dtype=np.int64)
    # Codes numbered by first appearance: a position is a first occurrence iff its code exceeds all before.
    if len(seen_codes):
        running_max = np.maximum.accumulate(seen_codes)
        first_seen = np.flatnonzero(np.concatenate([[True], seen_codes[1:] > running_max[:-1]]))
    else:
        first_seen = np.zeros(0, np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return DenseCodes(codes=rank[seen_codes], raw=raw, first=first_seen[order])


def _sorted_unique(values: pa.Array) -> pa.Array:
    """Unique strings in sorted raw-id order (no input validation)."""
    uniques = pc.unique(values)
    return uniques.take(pa.array(_text_order(uniques)))


def _encode_categorical(values: pa.Array) -> tuple[np.ndarray, list[str]]:
    """Codes ``1..C`` in sorted order of the raw values, 0 for "" (unknown); and the vocabulary list."""
    text = pc.fill_null(values, "")
    known = pc.filter(text, pc.not_equal(text, ""))
    vocab = _sorted_unique(known) if len(known) else pa.array([], pa.string())
    pos = pc.index_in(text, value_set=vocab)
    codes = pc.fill_null(pc.add(pc.cast(pos, pa.int64()), 1), 0).to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), ["<unknown>", *vocab.to_pylist()]


def _drain(chunks: list[Any], dtype: Any) -> np.ndarray:
    """Concatenate the chunks and empty the list, so that the pieces and the whole never coexist."""
    out = np.concatenate(chunks).astype(dtype, copy=False) if chunks else np.zeros(0, dtype)
    chunks.clear()
    return out


def _stable_order(user_codes: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Permutation sorting events by (user, ts); ties keep their input order (a stable sort).

    One stable argsort of a combined int64 key when it fits (timsort is quick on logs already grouped by
    user), else a lexsort (also stable).
    """
    if len(ts) == 0:
        return np.zeros(0, np.int64)
    t0, span = int(ts.min()), int(ts.max()) - int(ts.min()) + 1
    if int(user_codes.max() + 1) * span < (1 << 62):
        return np.argsort(user_codes * span + (ts - t0), kind="stable")
    return np.lexsort((ts, user_codes))


def write_import(out: str | os.PathLike, events: EventBuffer, *, importer: str, layout: str, source: str,
                 label_rule: str, completion_rule: str, duration_rule: str, play_time_rule: str, tally: BadRows,
                 started: float,
                 metadata: ItemMetadata | None = None, item_value_descriptions: dict[str, str] | None = None,
                 cross_descriptions: dict[str, str] | None = None, extra_notes: dict[str, Any] | None = None,
                 warnings: list[str] | None = None, progress: bool = False) -> ImportReport:
    """Map ids, build the item table, sort events stably by ``(user_id, ts)`` and write the dataset.

    Args:
        out: dataset folder (written atomically with :class:`~twinv2.data.store.DatasetWriter`).
        events: parsed events in input order (consumed: its lists are emptied as they are used).
        metadata: item features from an item file, joined on the raw item id (items without an entry get
            code 0 = unknown, counted in the warnings).
        item_value_descriptions: manifest descriptions of the per-event item categoricals in ``events``.
        cross_descriptions: manifest descriptions of the extra cross numerics in ``events``.
        progress: show a spinner on stderr while ids are mapped, events sorted and files written.
    Returns:
        The :class:`ImportReport` (also stored under ``notes.import`` in the manifest).
    """
    with stage(progress, f"mapping ids, sorting {len(events):,} events and writing {out}"):
        return _write_import(out, events, importer=importer, layout=layout, source=source,
                             label_rule=label_rule, completion_rule=completion_rule, duration_rule=duration_rule,
                             play_time_rule=play_time_rule, tally=tally, started=started, metadata=metadata,
                             item_value_descriptions=item_value_descriptions,
                             cross_descriptions=cross_descriptions, extra_notes=extra_notes, warnings=warnings)


def _write_import(out: str | os.PathLike, events: EventBuffer, *, importer: str, layout: str, source: str,
                  label_rule: str, completion_rule: str, duration_rule: str, play_time_rule: str, tally: BadRows,
                  started: float,
                  metadata: ItemMetadata | None, item_value_descriptions: dict[str, str] | None,
                  cross_descriptions: dict[str, str] | None, extra_notes: dict[str, Any] | None,
                  warnings: list[str] | None) -> ImportReport:
    """Body of :func:`write_import` (arguments already documented there)."""
    warnings = list(warnings or [])
    if len(events) == 0:
        raise DataValidationError(source, None, "at least one event", "none were left after checking the rows")
    users_coded, items_coded = dense_codes(events.users), dense_codes(events.items)
    events.users.clear()
    events.items.clear()
    user_codes, user_raw = users_coded.codes, users_coded.raw
    item_codes, item_raw = items_coded.codes + 1, items_coded.raw  # 0 is the padding item
    num_users, num_items = len(user_raw), len(item_raw)

    # Per-item values come from the item's first event in file order; first_event[i - 1] is item i's.
    first_event = items_coded.first
    duration = _drain(events.duration, np.float32)
    item_cols: dict[str, Any] = {
        "item_id": pa.array(np.arange(1, num_items + 1, dtype=np.int64)),
        "raw_item_id": item_raw,
        "duration": pa.array(duration[first_event]),
    }
    item_specs = [ColumnSpec("item_id", "id", "int64", description="dense item id (0 = padding)"),
                  ColumnSpec("raw_item_id", "raw_id", "string", description="item id in the source data"),
                  ColumnSpec("duration", "inherent_numeric", "float32",
                             description=duration_rule)]
    vocabularies: dict[str, list[str]] = {}

    def add_categorical(name: str, raw_values: pa.Array, description: str) -> None:
        codes, vocab = _encode_categorical(raw_values)
        item_cols[name] = pa.array(codes)
        vocabularies[name] = vocab
        item_specs.append(ColumnSpec(name, "inherent_categorical", "int64", vocab_size=len(vocab),
                                     description=description))

    if metadata is not None:
        metadata.check_unique()
        pos = pc.index_in(item_raw, value_set=metadata.raw_item_id)
        missing = int(pos.null_count)
        if missing:
            warnings.append(f"{missing} items with events have no entry in {metadata.source.name}; their "
                            f"{', '.join(metadata.features)} are 0 (unknown)")
        unused = len(metadata.raw_item_id) - (num_items - missing)
        if unused:
            warnings.append(f"{unused} items of {metadata.source.name} have no events and were left out")
        for name, values in metadata.features.items():
            add_categorical(name, pc.fill_null(pc.take(values, pos), ""), metadata.descriptions[name])
    for name in events.item_value_names:
        values = dense_codes(events.item_values[name])
        events.item_values[name].clear()
        chosen = values.codes[first_event]
        add_categorical(name, values.raw.take(pa.array(chosen)), (item_value_descriptions or {}).get(name, name))
        # Count items whose events disagree on the value (the first event's value was kept).
        disagree = values.codes != chosen[item_codes - 1]
        conflicting = np.unique(item_codes[disagree]).size
        if conflicting:
            warnings.append(f"{conflicting} items have more than one {name} across their events; "
                            "the value of their first event was kept")

    ts = _drain(events.ts, np.int64)
    order = _stable_order(user_codes, ts)
    event_cols: dict[str, Any] = {
        "user_id": pa.array(user_codes[order]),
        "item_id": pa.array(item_codes[order]),
        "ts": pa.array(ts[order]),
        "label": pa.array(_drain(events.label, np.int8)[order]),
        "play_time": pa.array(_drain(events.play_time, np.float32)[order]),
        "completion_ratio": pa.array(_drain(events.completion, np.float32)[order]),
    }
    event_specs = [
        ColumnSpec("user_id", "id", "int64", description="dense user id (sorted raw id order)"),
        ColumnSpec("item_id", "id", "int64", description="dense item id"),
        ColumnSpec("ts", "timestamp", "int64", description="seconds since 1970-01-01 UTC"),
        ColumnSpec("label", "label", "int8", description=label_rule),
        ColumnSpec("play_time", "cross_numeric", "float32", description=play_time_rule),
        ColumnSpec("completion_ratio", "cross_numeric", "float32", description=completion_rule),
    ]
    for name in events.cross_names:
        event_cols[name] = pa.array(_drain(events.cross[name], np.float32)[order])
        event_specs.append(ColumnSpec(name, "cross_numeric", "float32",
                                      description=(cross_descriptions or {}).get(name, name)))
    users = pa.table({"user_id": pa.array(np.arange(num_users, dtype=np.int64)), "raw_user_id": user_raw})

    report = ImportReport(out=Path(out), importer=importer, layout=layout, num_events=len(ts),
                          num_users=num_users, num_items=num_items, skipped_rows=tally.total,
                          bad_rows=tally.to_dict(), warnings=warnings)
    notes = {"import": {
        "importer": importer, "layout": layout, "source": source, "label_rule": label_rule,
        "completion_rule": completion_rule, "duration_rule": duration_rule,
        "play_time_rule": play_time_rule, "user_id_order": "sorted raw user id",
        "item_id_order": "sorted raw item id, starting at 1", "bad_rows": tally.to_dict(),
        "warnings": warnings, **(extra_notes or {}),
    }}
    vocab_bytes = (json.dumps(vocabularies, indent=1, ensure_ascii=False) + "\n").encode()
    with DatasetWriter(out, name=Path(out).name, source=f"{importer}:{source}", item_columns=item_specs,
                       event_columns=event_specs, notes=notes, extra_files={VOCAB_FILE: vocab_bytes}) as writer:
        writer.write_items(pa.table(item_cols))
        events_table = pa.table(event_cols)
        for batch in events_table.to_batches(max_chunksize=1 << 21):
            writer.write_events(pa.Table.from_batches([batch]))
        writer.write_users(users)
    report.seconds = time.perf_counter() - started
    return report

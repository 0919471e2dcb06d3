"""The data contract: column roles, the dataset manifest, and the validation every reader uses.

A dataset folder holds ``items.parquet``, ``events.parquet``, ``users.parquet``, ``user_offsets.npy``
(CSR offsets into the events, which are sorted by ``(user_id, ts)`` with a stable sort) and
``manifest.json``, which declares every column's role and vocabulary. Everything downstream reads the
manifest instead of hard-coding column names.

Roles:

- ``id``: ``user_id`` (dense, 0..num_users-1) and ``item_id`` (dense, 1..num_items; 0 is padding);
- ``timestamp``: ``ts``, int64 seconds;
- ``label``: ``label``, 0/1 click or engagement;
- ``inherent_categorical``: item features identical for every user (author, category, ...), int64 codes in
  ``[0, vocab_size)`` where 0 means unknown;
- ``inherent_numeric``: numeric item features (``duration`` in seconds, always present);
- ``cross_numeric``: user-item features of one event (``play_time`` and ``completion_ratio`` always present);
- ``raw_id``: the id in the source data, kept for lookups (``raw_item_id``, ``raw_user_id``), strings.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from twinv2.errors import DataValidationError

__all__ = [
    "FORMAT_VERSION",
    "ROLES",
    "ColumnSpec",
    "Manifest",
    "validate_table",
]

FORMAT_VERSION = 1
ROLES = ("id", "timestamp", "label", "inherent_categorical", "inherent_numeric", "cross_numeric", "raw_id")
MANIFEST_NAME = "manifest.json"

# Columns every dataset has, with their role and storage dtype.
REQUIRED_ITEM_COLUMNS = {"item_id": ("id", "int64"), "duration": ("inherent_numeric", "float32")}
REQUIRED_EVENT_COLUMNS = {
    "user_id": ("id", "int64"),
    "item_id": ("id", "int64"),
    "ts": ("timestamp", "int64"),
    "label": ("label", "int8"),
    "play_time": ("cross_numeric", "float32"),
    "completion_ratio": ("cross_numeric", "float32"),
}
_DTYPE_KINDS = {"int64": "i", "int8": "i", "float32": "f", "string": "U"}
_ARROW_TYPES = {"int64": pa.int64(), "int8": pa.int8(), "float32": pa.float32(), "string": pa.string()}


@dataclass(frozen=True)
class ColumnSpec:
    """One column of a dataset table: its name, role, storage dtype and (for categoricals) vocab size."""

    name: str
    role: str
    dtype: str
    vocab_size: int | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"column '{self.name}': role {self.role!r} is not one of {ROLES}")
        if self.dtype not in _DTYPE_KINDS:
            raise ValueError(f"column '{self.name}': dtype {self.dtype!r} is not one of {tuple(_DTYPE_KINDS)}")


@dataclass
class Manifest:
    """What a dataset folder holds; written by importers and the generator, read by everything else.

    Example:
        >>> m = Manifest.load("data/synth/manifest.json")  # doctest: +SKIP
        >>> [c.name for c in m.item_columns if c.role == "inherent_categorical"]  # doctest: +SKIP
        ['author_id', 'category_id']
    """

    name: str
    source: str
    num_users: int
    num_items: int
    num_events: int
    time_min: int
    time_max: int
    item_columns: list[ColumnSpec]
    event_columns: list[ColumnSpec]
    notes: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    # -- derived views -------------------------------------------------------------------------------
    def columns(self, table: str, role: str) -> list[ColumnSpec]:
        """Columns of ``table`` ('items' or 'events') with the given role, in declaration order."""
        cols = self.item_columns if table == "items" else self.event_columns
        return [c for c in cols if c.role == role]

    @property
    def item_categoricals(self) -> list[ColumnSpec]:
        """Inherent categorical item features (excluding ``item_id`` itself)."""
        return self.columns("items", "inherent_categorical")

    @property
    def item_numerics(self) -> list[ColumnSpec]:
        """Inherent numeric item features (``duration`` first)."""
        return self.columns("items", "inherent_numeric")

    @property
    def cross_numerics(self) -> list[ColumnSpec]:
        """Per-event cross features (``play_time``, ``completion_ratio``, ...)."""
        return self.columns("events", "cross_numeric")

    def fingerprint(self) -> str:
        """A short hash of the schema (not the data): checkpoints store it to detect a mismatched dataset."""
        import hashlib

        schema = {
            "items": [(c.name, c.role, c.dtype, c.vocab_size) for c in self.item_columns],
            "events": [(c.name, c.role, c.dtype, c.vocab_size) for c in self.event_columns],
            "num_items": self.num_items,
        }
        return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()[:16]

    # -- io ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["item_columns"] = [asdict(c) for c in self.item_columns]
        d["event_columns"] = [asdict(c) for c in self.event_columns]
        return d

    def save(self, path: str | Path) -> None:
        """Write the manifest as JSON, atomically."""
        from twinv2._io import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], file: str = MANIFEST_NAME) -> Manifest:
        """Build and check a manifest from a parsed JSON object; errors name ``file`` and the field."""
        required = ("name", "source", "num_users", "num_items", "num_events", "time_min", "time_max",
                    "item_columns", "event_columns")
        for key in required:
            if key not in d:
                raise DataValidationError(file, None, f"manifest field '{key}'", "it is missing")
        version = d.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise DataValidationError(file, None, f"format_version {FORMAT_VERSION}", str(version))
        try:
            item_cols = [ColumnSpec(**c) for c in d["item_columns"]]
            event_cols = [ColumnSpec(**c) for c in d["event_columns"]]
        except (TypeError, ValueError) as exc:
            raise DataValidationError(file, None, "valid column declarations", str(exc)) from exc
        m = cls(
            name=str(d["name"]), source=str(d["source"]), num_users=int(d["num_users"]),
            num_items=int(d["num_items"]), num_events=int(d["num_events"]), time_min=int(d["time_min"]),
            time_max=int(d["time_max"]), item_columns=item_cols, event_columns=event_cols,
            notes=dict(d.get("notes", {})), format_version=version,
        )
        m.check(file)
        return m

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        """Read and check ``manifest.json`` (or a folder holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / MANIFEST_NAME
        if not path.exists():
            raise DataValidationError(str(path), None, "a dataset manifest", "no such file")
        from twinv2._io import read_json_object

        d = read_json_object(path, "a JSON object (the dataset manifest)")
        return cls.from_dict(d, file=str(path))

    def check(self, file: str = MANIFEST_NAME) -> None:
        """Check that the required columns are declared with the right role and dtype."""
        for table, cols, required in (("items", self.item_columns, REQUIRED_ITEM_COLUMNS),
                                      ("events", self.event_columns, REQUIRED_EVENT_COLUMNS)):
            by_name = {c.name: c for c in cols}
            if len(by_name) != len(cols):
                raise DataValidationError(file, None, f"unique column names in {table}", "duplicates")
            for name, (role, dtype) in required.items():
                c = by_name.get(name)
                if c is None:
                    raise DataValidationError(file, name, f"a declared {table} column")
                if c.role != role or c.dtype != dtype:
                    raise DataValidationError(file, name, f"role={role}, dtype={dtype}",
                                              f"role={c.role}, dtype={c.dtype}")
            for c in cols:
                if c.role == "inherent_categorical" and (c.vocab_size is None or c.vocab_size < 1):
                    raise DataValidationError(file, c.name, "a positive vocab_size for a categorical")


def _type_ok(arrow_type: pa.DataType, dtype: str) -> bool:
    if dtype == "string":
        return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)
    return arrow_type == _ARROW_TYPES[dtype]


def validate_table(table: pa.Table, columns: list[ColumnSpec], file: str, *, check_values: bool = True) -> None:
    """Check an Arrow table against declared columns: presence, dtype and (optionally) values.

    Value checks: no null anywhere; no NaN or infinity in numerics; ids and timestamps non-negative;
    labels in {0, 1}; categorical codes in ``[0, vocab_size)``; ``play_time``/``duration`` non-negative;
    ``completion_ratio`` in [0, 1]. Raises :class:`DataValidationError` naming ``file`` and the column.
    """
    names = set(table.column_names)
    for c in columns:
        if c.name not in names:
            raise DataValidationError(file, c.name, f"a column of type {c.dtype} ({c.role})", "it is missing")
        col = table.column(c.name)
        if not _type_ok(col.type, c.dtype):
            raise DataValidationError(file, c.name, f"dtype {c.dtype}", str(col.type))
        if not check_values:
            continue
        if col.null_count:
            raise DataValidationError(file, c.name, "no missing values", f"{col.null_count} nulls")
        if c.dtype == "string":
            continue
        values = col.to_numpy()
        if values.size == 0:
            continue
        if values.dtype.kind == "f":
            bad = ~np.isfinite(values)
            if bad.any():
                raise DataValidationError(file, c.name, "finite numbers",
                                          f"{int(bad.sum())} NaN/inf values (first at row {int(np.argmax(bad))})")
        lo_required = c.role in ("id", "timestamp", "label", "inherent_categorical") or c.name in (
            "play_time", "duration", "completion_ratio")
        if lo_required and values.min() < 0:
            row = int(np.argmin(values))
            raise DataValidationError(file, c.name, "non-negative values", f"{values[row]} at row {row}")
        if c.role == "label" and values.max() > 1:
            raise DataValidationError(file, c.name, "labels 0 or 1", f"{values.max()}")
        if c.name == "completion_ratio" and values.max() > 1.0 + 1e-6:
            raise DataValidationError(file, c.name, "values in [0, 1]", f"max {values.max()}")
        if c.role == "inherent_categorical" and c.vocab_size is not None and values.max() >= c.vocab_size:
            raise DataValidationError(file, c.name, f"codes below vocab_size={c.vocab_size}", f"{values.max()}")

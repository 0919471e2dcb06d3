"""Taobao UserBehavior importer (``UserBehavior.csv``: ``user,item,category,behavior,timestamp``, no header).

Behaviors are ``pv`` (page view), ``fav`` (favourite), ``cart`` (add to cart) and ``buy``. Every row is an
interaction, so the label marks engagement beyond a view (see ``docs/importers.md``):

- ``label = 1`` for ``buy``, ``cart`` and ``fav`` (configurable), ``0`` for ``pv``;
- there is no play time: ``completion_ratio`` is the behavior's engagement level (pv 0.25, fav 0.5,
  cart 0.75, buy 1.0), so the compression's completion groups become behavior groups; ``duration = 1`` and
  ``play_time = completion_ratio``;
- the category becomes ``category_id`` (an item keeps the category of its first row).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twinv2.data.importers._assemble import EventBuffer, ImportReport, check_out_dir, write_import
from twinv2.data.importers._raw import BadRows, RawFile, RowChecks, TextFormat, read_progress
from twinv2.errors import ConfigError, DataValidationError

__all__ = ["BEHAVIORS", "ENGAGEMENT", "import_taobao"]

COLUMNS = ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
BEHAVIORS = ("pv", "fav", "cart", "buy")
# Engagement level of each behavior, in increasing order of commitment; used as the completion ratio.
ENGAGEMENT = {"pv": 0.25, "fav": 0.5, "cart": 0.75, "buy": 1.0}
DEFAULT_FILE = "UserBehavior.csv"


def import_taobao(src: str | os.PathLike, out: str | os.PathLike, *,
                  positive_behaviors: Sequence[str] = ("buy", "cart", "fav"), skip_bad_rows: bool = False,
                  overwrite: bool = False, progress: bool = False) -> ImportReport:
    """Import Taobao UserBehavior into a dataset folder.

    Args:
        src: ``UserBehavior.csv`` or a folder holding it (five comma-separated fields, no header).
        out: dataset folder to write (atomically).
        positive_behaviors: behaviors labelled 1 (default buy, cart, fav; the rest are 0).
        skip_bad_rows: drop malformed or invalid rows (counted) instead of raising.
        overwrite: replace ``out`` if it is an existing dataset folder.
        progress: show a progress bar on stderr.
    Returns:
        An :class:`ImportReport`; items get ``category_id``.
    Raises:
        DataValidationError: naming the file, the column, the expectation and the first bad value.
        ConfigError: an unknown behavior in ``positive_behaviors``.

    Example:
        >>> import_taobao("UserBehavior.csv", "data/taobao", progress=True)  # doctest: +SKIP
    """
    started = time.perf_counter()
    src = Path(src)
    unknown = sorted(set(positive_behaviors) - set(BEHAVIORS))
    if unknown:
        raise ConfigError(f"positive behaviors: unknown {unknown}; expected some of {list(BEHAVIORS)}")
    check_out_dir(out, overwrite)
    path = src / DEFAULT_FILE if src.is_dir() else src
    if src.is_dir() and not path.is_file():
        raise DataValidationError(str(src), None, f"a folder holding {DEFAULT_FILE}", "no such file")
    tally = BadRows()
    fmt = TextFormat(header=False, column_names=COLUMNS, quoting=False)
    raw = RawFile(path, COLUMNS, text=fmt, skip_bad_rows=skip_bad_rows, tally=tally)
    codes = {b: i for i, b in enumerate(BEHAVIORS)}
    positive = np.array([b in positive_behaviors for b in BEHAVIORS], dtype=np.int8)
    engagement = np.array([ENGAGEMENT[b] for b in BEHAVIORS], dtype=np.float32)
    events = EventBuffer(item_value_names=["category_id"])
    with read_progress(progress, f"reading {path.name}", raw.size()) as update:
        for start, table in raw.batches(update):
            checks = RowChecks(raw, start, table)
            user = checks.ids("user_id")
            item = checks.ids("item_id")
            category = checks.ids("category_id")
            behavior = checks.choice("behavior_type", codes)
            ts = checks.timestamps("timestamp", "s")
            level = engagement[behavior]
            events.add(checks.keep(), user=user, item=item, ts=ts, label=positive[behavior], play_time=level,
                       duration=np.ones(len(level), np.float32), completion=level,
                       item_values={"category_id": category})
    label_rule = f"1 if behavior in {{{', '.join(positive_behaviors)}}} else 0"
    completion_rule = ("Taobao has no play time: completion_ratio = play_time = engagement level of the behavior "
                       "(" + ", ".join(f"{b} {v:g}" for b, v in ENGAGEMENT.items()) + ")")
    return write_import(
        out, events, importer="taobao", layout="UserBehavior", source=str(path), label_rule=label_rule,
        completion_rule=completion_rule, duration_rule="1 for every item (Taobao has no durations)",
        play_time_rule="= completion_ratio (Taobao has no play time)", tally=tally,
        started=started, item_value_descriptions={"category_id": "Taobao category of the item's first row"},
        progress=progress,
    )

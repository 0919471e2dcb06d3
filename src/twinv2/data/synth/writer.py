"""Writing a synthetic dataset: the item and event columns, and :func:`synthesize`, which streams users
in chunks through :class:`twinv2.data.store.DatasetWriter` together with their ground truth."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2._io import save_npy_atomic
from twinv2.data.schema import ColumnSpec, Manifest
from twinv2.data.store import DatasetWriter, check_out_dir
from twinv2.data.synth._sampling import as_seed_int
from twinv2.data.synth.config import SynthConfig, config_for_scale
from twinv2.data.synth.events import generate_user
from twinv2.data.synth.items import ItemUniverse, build_items
from twinv2.data.synth.truth import GROUND_TRUTH_FILES, truth_schema, truth_tables
from twinv2.data.synth.users import activity_counts
from twinv2.errors import ConfigError

__all__ = ["EVENT_COLUMNS", "ITEM_COLUMNS", "synthesize"]

ITEM_COLUMNS = [
    ColumnSpec("item_id", "id", "int64", description="dense item id, 1..num_items (0 = padding)"),
    ColumnSpec("category_id", "inherent_categorical", "int64", description="item category, 1..num_categories"),
    ColumnSpec("author_id", "inherent_categorical", "int64", description="item author, 1..num_authors"),
    ColumnSpec("duration", "inherent_numeric", "float32", description="video duration in seconds"),
    ColumnSpec("raw_item_id", "raw_id", "string", description="synthetic source id"),
]
EVENT_COLUMNS = [
    ColumnSpec("user_id", "id", "int64", description="dense user id"),
    ColumnSpec("item_id", "id", "int64", description="exposed item"),
    ColumnSpec("ts", "timestamp", "int64", description="request time, unix seconds (a page shares one)"),
    ColumnSpec("label", "label", "int8", description="1 if the user clicked the exposed item"),
    ColumnSpec("play_time", "cross_numeric", "float32", description="seconds played (0 without a click)"),
    ColumnSpec("completion_ratio", "cross_numeric", "float32",
               description="play_time / duration clipped to [0, 1]"),
]


def _events_table(parts: list[dict[str, np.ndarray]]) -> pa.Table:
    cols = {c.name: np.concatenate([p[c.name] for p in parts]) for c in EVENT_COLUMNS}
    return pa.table(cols)


def _items_table(items: ItemUniverse) -> pa.Table:
    ids = np.arange(1, items.num_items + 1, dtype=np.int64)
    width = len(str(items.num_items))
    return pa.table({
        "item_id": ids,
        "category_id": items.category[1:],
        "author_id": items.author[1:],
        "duration": items.duration[1:],
        "raw_item_id": pa.array([f"synth-item-{i:0{width}d}" for i in ids], pa.string()),
    })


def _user_batches(counts: np.ndarray, chunk_events: int) -> Iterator[tuple[int, int]]:
    """Consecutive user ranges ``[lo, hi)`` holding about ``chunk_events`` events each."""
    lo, acc = 0, 0
    for u, n in enumerate(counts):
        acc += int(n)
        if acc >= chunk_events:
            yield lo, u + 1
            lo, acc = u + 1, 0
    if lo < len(counts):
        yield lo, len(counts)


def synthesize(out: str | os.PathLike, *, users: int | None = None, scale: str = "default",
               seed: int | np.random.Generator = 0, max_events: int | None = None, progress: bool = True,
               config: SynthConfig | None = None, chunk_events: int = 1 << 20) -> Manifest:
    """Generate a synthetic life-cycle dataset into the folder ``out`` (atomically) and return its manifest.

    Users are generated one at a time and written in chunks of about ``chunk_events`` events, so memory
    is bounded by the largest user plus one chunk, not by the total. The output does not depend on
    ``chunk_events``.

    Args:
        out: dataset folder to create. An existing dataset folder (or an empty folder) is replaced once the
            new one is complete; a file or a non-empty folder without ``manifest.json`` is refused.
        users: number of users (overrides the scale's preset).
        scale: ``small``, ``default``, ``large`` or ``lifecycle`` (see ``SCALES``); ignored when ``config``
            is given.
        seed: an integer or a numpy Generator (converted once); same seed, same dataset.
        max_events: per-user cap; the heaviest user gets exactly this many events.
        progress: show a progress bar on stderr.
        config: a full :class:`SynthConfig` instead of a preset (``users``/``max_events`` still override).
        chunk_events: events per write (memory/speed trade-off only).
    Returns:
        The :class:`Manifest`; ``notes`` holds the seed, scale, full config, ground-truth file names,
        ``max_user_events`` and ``label_rate``.
    """
    if config is None:
        cfg = config_for_scale(scale, users=users, max_events=max_events)
    else:
        cfg = dataclasses.replace(config, **{k: v for k, v in (("num_users", users), ("max_events", max_events))
                                             if v is not None})
        cfg.validate()
        scale = "custom"
    if chunk_events < 1:
        raise ConfigError(f"synth: chunk_events={chunk_events} should be >= 1")
    check_out_dir(out)
    seed_int = as_seed_int(seed)
    items = build_items(cfg, seed_int)
    counts = activity_counts(cfg, seed_int)

    item_cols = [dataclasses.replace(c, vocab_size=cfg.num_categories + 1) if c.name == "category_id" else
                 dataclasses.replace(c, vocab_size=cfg.num_authors + 1) if c.name == "author_id" else c
                 for c in ITEM_COLUMNS]
    notes = {
        "generator": "twinv2.data.synth",
        "scale": scale,
        "seed": seed_int,
        "config": dataclasses.asdict(cfg),
        "ground_truth": dict(GROUND_TRUTH_FILES),
        "ground_truth_note": "analysis only: no model may read these files",
        "max_user_events": int(counts.max()),
    }
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    clicks = 0
    with DatasetWriter(out, name=f"synth-{scale}", source="synthetic", item_columns=item_cols,
                       event_columns=EVENT_COLUMNS, notes=notes) as writer:
        writer.write_items(_items_table(items))
        gt = writer.tmp / "ground_truth"
        gt.mkdir()
        save_npy_atomic(gt / "item_latent.npy", items.latent)
        save_npy_atomic(gt / "category_centers.npy", items.category_centers.astype(np.float32))
        pq.write_table(pa.table({"item_id": np.arange(items.num_items + 1, dtype=np.int64),
                                 "popularity": items.popularity, "quality": items.quality}),
                       gt / "items.parquet")
        bar = Progress(TextColumn("synth {task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[events]:,} events"), TimeElapsedColumn(),
                       console=Console(stderr=True), disable=not progress, transient=False)
        total_events = int(counts.sum())
        prob_tmp = gt / f".{Path(GROUND_TRUTH_FILES['click_prob']).name}.partial"
        click_prob = np.lib.format.open_memmap(prob_tmp, mode="w+", dtype=np.float32, shape=(total_events,))
        with bar, pq.ParquetWriter(gt / "users.parquet", truth_schema(cfg)[0]) as users_w, \
                pq.ParquetWriter(gt / "interests.parquet", truth_schema(cfg)[1]) as interests_w:
            task = bar.add_task(f"{scale} users", total=cfg.num_users, events=0)
            done_events = 0
            for lo, hi in _user_batches(counts, chunk_events):
                parts, truths = [], []
                for u in range(lo, hi):
                    ev, truth = generate_user(items, cfg, seed_int, u, int(counts[u]))
                    parts.append(ev)
                    truths.append(truth)
                table = _events_table(parts)
                del parts
                clicks += int(np.count_nonzero(table.column("label").to_numpy()))
                for offset in range(0, table.num_rows, chunk_events):
                    writer.write_events(table.slice(offset, chunk_events))
                users_t, interests_t = truth_tables(truths, cfg)
                users_w.write_table(users_t)
                interests_w.write_table(interests_t)
                # Events are written in generation order, so the probabilities align row by row.
                click_prob[done_events:done_events + table.num_rows] = np.concatenate([t.click_prob for t in truths])
                done_events += table.num_rows
                bar.update(task, advance=hi - lo, events=done_events)
        click_prob.flush()
        del click_prob
        os.replace(prob_tmp, writer.tmp / GROUND_TRUTH_FILES["click_prob"])
        writer.notes["label_rate"] = round(clicks / max(int(counts.sum()), 1), 6)
    assert writer.manifest is not None
    return writer.manifest

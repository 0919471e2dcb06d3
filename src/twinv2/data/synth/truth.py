"""The ground-truth files beside a synthetic dataset: their names, the per-user and per-interest tables,
and the loader of the true click probabilities. No model reads any of them."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from twinv2.data.schema import MANIFEST_NAME, Manifest
from twinv2.data.store import EVENTS_FILE
from twinv2.data.synth.config import DAY, INTEREST_KINDS, YEAR_DAYS, SynthConfig
from twinv2.data.synth.users import UserTruth
from twinv2.errors import DataValidationError

__all__ = ["GROUND_TRUTH_FILES", "load_click_prob", "truth_schema", "truth_tables"]

GROUND_TRUTH_FILES = {
    "users": "ground_truth/users.parquet",
    "interests": "ground_truth/interests.parquet",
    "items": "ground_truth/items.parquet",
    "item_latent": "ground_truth/item_latent.npy",
    "category_centers": "ground_truth/category_centers.npy",
    "click_prob": "ground_truth/click_prob.npy",
}


def truth_tables(truths: list[UserTruth], cfg: SynthConfig) -> tuple[pa.Table, pa.Table]:
    """Ground-truth rows: one per user, one per interest."""
    D = cfg.latent_dim
    users = pa.table({
        "user_id": np.array([t.user_id for t in truths], np.int64),
        "num_events": np.array([t.num_events for t in truths], np.int64),
        "join_ts": np.array([t.join_ts for t in truths], np.int64),
        "click_bias": np.array([t.click_bias for t in truths], np.float32),
        "activity_trend": np.array([t.activity_trend for t in truths], np.float32),
        "num_interests": np.array([len(t.kind) for t in truths], np.int64),
        "max_session_shift_days": np.array([t.extra["max_session_shift_days"] for t in truths], np.float32),
        "max_state_lag_days": np.array([t.extra["max_state_lag_days"] for t in truths], np.float32),
    })
    k = np.array([len(t.kind) for t in truths])
    cat = np.concatenate
    to_deg = 180.0 / math.pi
    vec_type = pa.list_(pa.float32(), D)
    interests = pa.table({
        "user_id": np.repeat([t.user_id for t in truths], k).astype(np.int64),
        "interest": cat([np.arange(len(t.kind)) for t in truths]).astype(np.int64),
        "kind": pa.array(np.array(INTEREST_KINDS)[cat([t.kind for t in truths])], pa.string()),
        "weight": cat([t.weight for t in truths]).astype(np.float32),
        "category_id": cat([t.category for t in truths]).astype(np.int64),
        "target_category_id": cat([t.target_category for t in truths]).astype(np.int64),
        "drift_deg_per_year": (cat([t.drift_rate for t in truths]) * YEAR_DAYS * DAY * to_deg).astype(np.float32),
        "drift_max_deg": (cat([t.drift_max for t in truths]) * to_deg).astype(np.float32),
        "drift_start_ts": np.repeat([t.join_ts for t in truths], k).astype(np.int64),
        "period_days": cat([t.period_days for t in truths]).astype(np.float64),
        "phase_days": cat([t.phase_days for t in truths]).astype(np.float64),
        "window_days": cat([t.window_days for t in truths]).astype(np.float64),
        "vec_a": pa.FixedSizeListArray.from_arrays(cat([t.vec_a for t in truths]).astype(np.float32).ravel(), D)
        .cast(vec_type),
        "vec_b": pa.FixedSizeListArray.from_arrays(cat([t.vec_b for t in truths]).astype(np.float32).ravel(), D)
        .cast(vec_type),
    })
    return users, interests


def truth_schema(cfg: SynthConfig) -> tuple[pa.Schema, pa.Schema]:
    """Schemas of the ground-truth tables (fixed up front so every chunk appends to the same file)."""
    probe = UserTruth(user_id=0, num_events=0, join_ts=0, click_bias=0.0, activity_trend=0.0,
                      kind=np.zeros(1, np.int8), weight=np.ones(1), category=np.ones(1, np.int64),
                      target_category=np.zeros(1, np.int64), drift_rate=np.zeros(1), drift_max=np.zeros(1),
                      period_days=np.zeros(1), phase_days=np.zeros(1), window_days=np.zeros(1),
                      vec_a=np.zeros((1, cfg.latent_dim)), vec_b=np.zeros((1, cfg.latent_dim)),
                      extra={"max_session_shift_days": 0.0, "max_state_lag_days": 0.0})
    users, interests = truth_tables([probe], cfg)
    return users.schema, interests.schema


def load_click_prob(dataset_dir: str | os.PathLike) -> np.ndarray:
    """The true click probability of every event of a synthetic dataset, float32 ``[E]`` aligned with events.

    Row ``r`` is the probability from which the label of row ``r`` of ``events.parquet`` was drawn (the
    sigmoid of the click logit, noise included): an oracle for analysis and ceilings, never a model input.

    Raises:
        DataValidationError: naming ``ground_truth/click_prob.npy`` when it is missing (a dataset not made by
            this generator, or by a version before it wrote the file), unreadable, not a 1-D float array of
            probabilities, or not as long as the dataset's events.
    """
    root = Path(dataset_dir)
    path = root / GROUND_TRUTH_FILES["click_prob"]
    manifest = Manifest.load(root / MANIFEST_NAME)
    if not path.is_file():
        raise DataValidationError(str(path), None, "the synthetic generator's click probabilities",
                                  "no such file (regenerate with `twinv2 data synth`)")
    try:
        prob = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataValidationError(str(path), None, "a readable .npy file", str(exc).splitlines()[0]) from exc
    if prob.ndim != 1 or prob.dtype.kind != "f":
        raise DataValidationError(str(path), None, "a 1-D float array", f"{prob.dtype} of shape {prob.shape}")
    num_rows = pq.ParquetFile(root / EVENTS_FILE).metadata.num_rows if (root / EVENTS_FILE).is_file() else None
    for what, n in (("manifest.num_events", manifest.num_events), (EVENTS_FILE, num_rows)):
        if n is not None and len(prob) != n:
            raise DataValidationError(str(path), None, f"one probability per event ({what}: {n:,})",
                                      f"{len(prob):,}")
    if prob.size and not (np.isfinite(prob).all() and prob.min() >= 0.0 and prob.max() <= 1.0):
        raise DataValidationError(str(path), None, "probabilities in [0, 1]", "values outside")
    return prob.astype(np.float32, copy=False)

"""Shared fixtures of the generator tests: a tiny configuration and one dataset generated from it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from twinv2.data.synth import SCALES, synthesize

# A few dozen users over two years: every test generates in well under a second.
TINY = dataclasses.replace(SCALES["small"], num_users=40, num_items=600, num_categories=15, num_authors=60,
                           events_median=120.0, max_events=2500)


def events_of(path: Path) -> dict[str, np.ndarray]:
    """The columns of ``path/events.parquet`` as numpy arrays."""
    t = pq.read_table(path / "events.parquet")
    return {name: t.column(name).to_numpy() for name in t.column_names}


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A TINY dataset (seed 3), generated once and only read by the tests."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    synthesize(out, config=TINY, seed=3, progress=False)
    return out

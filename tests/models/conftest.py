"""Fixtures of the model tests (the builders live in model_testing.py)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.models.model_testing import write_tiny_dataset
from twinv2.data.batches import Batch, BatchBuilder, SequenceConfig
from twinv2.data.split import TemporalSplit, make_samples
from twinv2.data.store import Dataset


@pytest.fixture(scope="session")
def model_dataset(tmp_path_factory) -> Dataset:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny") / "data")


@pytest.fixture(scope="session")
def builder_batch(model_dataset) -> Batch:
    """A batch built the real way: temporal split, samples, BatchBuilder (raw long sequences)."""
    split = TemporalSplit.from_fractions(model_dataset.histories.ts, 0.5, 0.8, 0.9)
    samples = make_samples(model_dataset, split, "train")
    builder = BatchBuilder(model_dataset, SequenceConfig(long_len=20, short_len=8))
    return builder.build(samples, np.arange(min(len(samples), 16)))

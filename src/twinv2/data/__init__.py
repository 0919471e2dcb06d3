"""Data: the contract (schema + manifest), dataset folders with CSR histories, the temporal split, batches,
the synthetic life-cycle generator and real-data importers."""

from twinv2.data.schema import ColumnSpec, Manifest, validate_table
from twinv2.data.split import Samples, TemporalSplit, make_samples
from twinv2.data.store import Dataset, DatasetWriter, Histories, load_dataset, write_dataset

__all__ = [
    "Batch",
    "BatchBuilder",
    "ColumnSpec",
    "Dataset",
    "DatasetWriter",
    "Histories",
    "Manifest",
    "Samples",
    "SequenceBatch",
    "SequenceConfig",
    "TemporalSplit",
    "load_dataset",
    "make_samples",
    "sequence_feature_names",
    "validate_table",
    "write_dataset",
]

_LAZY = {"Batch", "BatchBuilder", "SequenceBatch", "SequenceConfig", "sequence_feature_names"}


def __getattr__(name: str):
    # Batches need torch; import them on first use so `twinv2 data ...` commands start fast.
    if name in _LAZY:
        from twinv2.data import batches

        return getattr(batches, name)
    raise AttributeError(f"module 'twinv2.data' has no attribute {name!r}")

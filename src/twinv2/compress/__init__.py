"""Offline life-cycle compression (DESIGN §2.2): per-user hierarchical clustering into virtual items.

Pipeline: an item embedding table (:mod:`~twinv2.compress.embeddings`) -> per-user clustering within
play-completion groups (:mod:`~twinv2.compress.cluster`, kernels in :mod:`~twinv2.compress.kmeans`) ->
virtual items (:mod:`~twinv2.compress.virtual_items`) -> a resumable, partitioned folder
(:mod:`~twinv2.compress.job`, :mod:`~twinv2.compress.store`), on one machine or on Spark
(:mod:`~twinv2.compress.spark`). :mod:`~twinv2.compress.stats` summarises a finished folder.

Example:
    >>> from twinv2.compress import ClusterConfig, compress_dataset, load_compressed  # doctest: +SKIP
    >>> compress_dataset("data/synth", "out/c", snapshot_ts=1_700_000_000, config=ClusterConfig(gamma=20))
    >>> c = load_compressed("out/c")
"""

from twinv2.compress.cluster import (
    ClusterConfig,
    ClusterResult,
    IncrementalResult,
    assign_incremental,
    cluster_life_cycle,
    completion_groups,
)
from twinv2.compress.embeddings import (
    EmbeddingSource,
    ItemEmbeddingTable,
    cooccurrence_embeddings,
    item_embedding_table,
    load_checkpoint_item_embeddings,
    load_embedding_file,
    write_embedding_file,
)
from twinv2.compress.job import CompressSummary, compress_dataset, compress_incremental
from twinv2.compress.stats import compression_stats
from twinv2.compress.store import CompressedLifeCycles, load_compressed
from twinv2.compress.virtual_items import build_virtual_items, update_virtual_items

__all__ = [
    "ClusterConfig",
    "ClusterResult",
    "CompressSummary",
    "CompressedLifeCycles",
    "EmbeddingSource",
    "IncrementalResult",
    "ItemEmbeddingTable",
    "assign_incremental",
    "build_virtual_items",
    "cluster_life_cycle",
    "completion_groups",
    "compress_dataset",
    "compress_incremental",
    "compression_stats",
    "cooccurrence_embeddings",
    "item_embedding_table",
    "load_checkpoint_item_embeddings",
    "load_compressed",
    "load_embedding_file",
    "update_virtual_items",
    "write_embedding_file",
]

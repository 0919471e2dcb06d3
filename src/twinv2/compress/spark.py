"""Spark backend of the compression job: the same per-user function under ``groupBy().applyInPandas``.

Stage 1 reads ``events.parquet`` with Spark, keeps behaviors strictly before the snapshot of the pending
parts' users, and runs :meth:`UserCompressor.compress` per user (``groupBy("user_id").applyInPandas``).
Stage 2 groups the virtual items by part (``user_id div users_per_part``) and writes each part file with
the local backend's writer, so the files are byte-identical to a local run and resumption works across
backends. Executors write the part files directly: ``--out`` must be on a filesystem every executor and
the driver can reach (local disk in ``local[N]`` mode, NFS or a mounted bucket on a cluster).

pyspark is imported only here, inside the functions, so ``twinv2`` works without it.

Run on a cluster with ``spark-submit`` through :mod:`twinv2.spark_submit` (the entry point, options as
``twinv2 compress``); this module does not import the CLI, so the package has no import circle.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from twinv2.compress.compressor import ONE_THREAD_ENV, UserCompressor
from twinv2.compress.store import empty_columns, part_name, virtual_item_schema, write_part
from twinv2.data.store import EVENTS_FILE, Dataset
from twinv2.errors import CompressionError

__all__ = ["run_spark_parts", "spark_available"]

_ROW = "_row"    # position of a virtual item within its user's sorted rows
_PART = "_part"  # part index = user_id div users_per_part


def spark_available() -> bool:
    """True when pyspark imports and a Java runtime is on the PATH or under ``JAVA_HOME``."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return False
    java_home = os.environ.get("JAVA_HOME")
    return shutil.which("java") is not None or bool(java_home and (Path(java_home) / "bin" / "java").exists())


def _spark_type(t: pa.DataType) -> Any:
    from pyspark.sql import types as T

    if pa.types.is_list(t):
        return T.ArrayType(_spark_type(t.value_type), containsNull=False)
    return {pa.int64(): T.LongType(), pa.int8(): T.ByteType(), pa.float32(): T.FloatType(),
            pa.float64(): T.DoubleType()}[t]


def _spark_schema(schema: pa.Schema, extra: dict[str, Any]) -> Any:
    from pyspark.sql import types as T

    fields = [T.StructField(f.name, _spark_type(f.type), nullable=False) for f in schema]
    fields += [T.StructField(name, t, nullable=False) for name, t in extra.items()]
    return T.StructType(fields)


def _session(master: str | None, workers: int) -> tuple[Any, bool]:
    """The active session (``spark-submit``), or a new one (``True``): local with small, test-friendly
    settings unless ``master`` names a cluster."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active, False
    # Executors run the Python of this process, with one maths thread each.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("twinv2-compress")
    for var in ONE_THREAD_ENV:
        builder = builder.config(f"spark.executorEnv.{var}", "1")
    if master is None and "PYSPARK_GATEWAY_PORT" not in os.environ:  # not under spark-submit: run locally
        master = f"local[{workers}]"
    if master is not None:
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        builder = (builder.config("spark.sql.shuffle.partitions", str(max(2, 2 * workers)))
                   .config("spark.default.parallelism", str(max(2, workers)))
                   .config("spark.ui.enabled", "false")
                   .config("spark.driver.memory", "1g"))
    return builder.getOrCreate(), True


def _compress_users_fn(comp_bc: Any, cross_names: list[str]):
    """The per-user function of stage 1: pandas rows of one user -> the user's virtual items."""

    def compress_user(pdf: pd.DataFrame) -> pd.DataFrame:
        comp: UserCompressor = comp_bc.value
        user = int(pdf["user_id"].iloc[0])
        cols = comp.compress(user, pdf["item_id"].to_numpy(np.int64), pdf["ts"].to_numpy(np.int64),
                             pdf["label"].to_numpy(np.int8),
                             {n: pdf[n].to_numpy(np.float32) for n in cross_names})
        frame = {name: values for name, values in cols.items() if name != "centroid"}
        frame["centroid"] = list(cols["centroid"])
        frame[_ROW] = np.arange(len(cols["user_id"]), dtype=np.int64)
        return pd.DataFrame(frame)

    return compress_user


def _write_parts_fn(out: str, schema: pa.Schema, dim: int):
    """The per-part function of stage 2: all virtual items of one part -> the part file + a summary row."""

    def write_one_part(pdf: pd.DataFrame) -> pd.DataFrame:
        part = int(pdf[_PART].iloc[0])
        pdf = pdf.sort_values(["user_id", _ROW], kind="mergesort")
        cols = {}
        for f in schema:
            if f.name == "centroid":
                cols[f.name] = (np.stack(pdf[f.name].to_numpy()).astype(np.float32) if len(pdf)
                                else np.zeros((0, dim), np.float32))
            else:
                cols[f.name] = pdf[f.name].to_numpy(f.type.to_pandas_dtype())
        write_part(Path(out) / part_name(part), cols, schema)
        return pd.DataFrame({"part": [part], "clusters": [len(pdf)],
                             "behaviors": [int(cols["cluster_size"].sum())]})

    return write_one_part


def run_spark_parts(comp: UserCompressor, ds: Dataset, out: Path, pending: list[int], users_per_part: int,
                    snapshot_ts: int, *, workers: int = 2, master: str | None = None) -> int:
    """Compute and write the ``pending`` parts with Spark; returns how many part files Spark wrote.

    Parts whose users have no behavior before the snapshot get no rows from Spark; the driver writes them
    as empty files (identical to the local backend's).
    """
    if not spark_available():
        raise CompressionError("--backend spark needs pyspark (pip install 'twinv2[spark]') and Java 17")
    if not pending:
        return 0
    spark, created = _session(master, workers)
    try:
        done = _run_stages(spark, comp, ds, out, pending, users_per_part, snapshot_ts)
    finally:
        if created:
            spark.stop()
    schema = virtual_item_schema(comp.mean_names, comp.share_names)
    dim = int(comp.embeddings.shape[1])  # type: ignore[union-attr]
    for p in pending:
        if p not in done:
            write_part(out / part_name(p), empty_columns(schema, dim), schema)
    return len(done)


def _run_stages(spark: Any, comp: UserCompressor, ds: Dataset, out: Path, pending: list[int],
                users_per_part: int, snapshot_ts: int) -> set[int]:
    """The two Spark stages; returns the parts whose files Spark wrote."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    schema = virtual_item_schema(comp.mean_names, comp.share_names)
    dim = int(comp.embeddings.shape[1])  # type: ignore[union-attr]
    cross_names = list(comp.cross_names)
    comp_bc = spark.sparkContext.broadcast(comp)
    part_of = F.expr(f"user_id div {int(users_per_part)}")
    events = (spark.read.parquet(str(ds.path / EVENTS_FILE))
              .select("user_id", "item_id", "ts", "label", *cross_names)
              .where(F.col("ts") < F.lit(int(snapshot_ts)))
              .where(part_of.isin([int(p) for p in pending])))
    virtual = events.groupBy("user_id").applyInPandas(
        _compress_users_fn(comp_bc, cross_names), _spark_schema(schema, {_ROW: T.LongType()}))
    summary_schema = T.StructType([T.StructField("part", T.LongType()), T.StructField("clusters", T.LongType()),
                                   T.StructField("behaviors", T.LongType())])
    written = (virtual.withColumn(_PART, part_of)
               .groupBy(_PART).applyInPandas(_write_parts_fn(str(out), schema, dim), summary_schema)
               .collect())
    comp_bc.unpersist()
    return {int(r["part"]) for r in written}

"""The Spark backend (local[2]) writes the same bytes as the local backend."""

from __future__ import annotations

import numpy as np
import pytest

from tests.compress.job_testing import GAMMA, SNAPSHOT, folder_digest, make_job_dataset
from twinv2.compress import ClusterConfig, compress_dataset, load_compressed
from twinv2.compress.spark import spark_available

pytestmark = [
    pytest.mark.spark,
    pytest.mark.skipif(not spark_available(), reason="needs pyspark and a Java runtime"),
]


def test_spark_backend_matches_local_backend(tmp_path):
    ds = make_job_dataset(tmp_path / "ds")
    # One user per part: user 3 has no behavior before the snapshot, so Spark returns no row for part 3 and
    # the driver writes that part empty, as the local backend does.
    common = {"config": ClusterConfig(gamma=GAMMA), "users_per_part": 1, "progress": False}
    compress_dataset(ds, tmp_path / "local", SNAPSHOT, **common)
    # Resumption works across backends: the local backend writes two parts, Spark the rest.
    out = tmp_path / "spark"

    class InterruptedRunError(Exception):
        pass

    def stop(parts_done):
        if parts_done == 2:
            raise InterruptedRunError

    with pytest.raises(InterruptedRunError):
        compress_dataset(ds, out, SNAPSHOT, _after_part=stop, **common)
    summary = compress_dataset(ds, out, SNAPSHOT, backend="spark", workers=2, spark_master="local[2]", **common)
    assert summary.parts_skipped == 2 and summary.parts_written == 20
    assert folder_digest(out) == folder_digest(tmp_path / "local")
    a, b = load_compressed(tmp_path / "local"), load_compressed(out)
    np.testing.assert_array_equal(a.rep_item_id, b.rep_item_id)


def test_spark_backend_matches_local_backend_with_split_by(tmp_path):
    ds = make_job_dataset(tmp_path / "ds")
    common = {"config": ClusterConfig(gamma=GAMMA, split_by="category_id"), "users_per_part": 4, "progress": False}
    compress_dataset(ds, tmp_path / "local", SNAPSHOT, **common)
    compress_dataset(ds, tmp_path / "spark", SNAPSHOT, backend="spark", workers=2, spark_master="local[2]", **common)
    assert folder_digest(tmp_path / "spark") == folder_digest(tmp_path / "local")
    c = load_compressed(tmp_path / "spark")
    assert c.manifest["cluster_config"]["split_by"] == "category_id"
    assert c.manifest["member_share_features"] == ["category_id"]

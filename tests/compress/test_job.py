"""The compression job: snapshot, invariants, resumption after interruption and SIGKILL, workers,
incremental updates, stats and the CLI."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.compress.job_testing import (
    EVENT_COLUMNS,
    GAMMA,
    ITEM_COLUMNS,
    SNAPSHOT,
    folder_digest,
    job_tables,
    make_job_dataset,
)
from twinv2.cli import app
from twinv2.compress import ClusterConfig, compress_dataset, compress_incremental, compression_stats, load_compressed
from twinv2.compress.cluster import completion_groups
from twinv2.compress.store import JOB_FILE, MANIFEST_FILE
from twinv2.data.store import load_dataset, write_dataset
from twinv2.errors import CompressionError, ConfigError, DataValidationError, EmbeddingError

CONFIG = ClusterConfig(gamma=GAMMA)
PART = 4  # users per part: 22 users -> 6 parts


@pytest.fixture(scope="module")
def ds_dir(tmp_path_factory):
    return make_job_dataset(tmp_path_factory.mktemp("job") / "ds")


@pytest.fixture(scope="module")
def reference(ds_dir, tmp_path_factory):
    """An uninterrupted single-worker run every other run is compared with."""
    out = tmp_path_factory.mktemp("ref") / "c"
    compress_dataset(ds_dir, out, SNAPSHOT, config=CONFIG, users_per_part=PART, progress=False)
    return out


def run(ds_dir, out, **kwargs):
    kwargs = {"config": CONFIG, "users_per_part": PART, "progress": False, **kwargs}
    return compress_dataset(ds_dir, out, SNAPSHOT, **kwargs)


def check_invariants(c, ds, snapshot, gamma=GAMMA):
    """Every behavior before ``snapshot`` is in exactly one cluster; sums of means match the raw sums."""
    h = ds.histories
    users = np.arange(h.num_users)
    end = h.end_before(users, np.full(h.num_users, snapshot))
    assert c.cluster_size.max() <= gamma and c.cluster_size.min() >= 1
    for u in users:
        rows = slice(c.offsets[u], c.offsets[u + 1])
        lo, hi = h.offsets[u], end[u]
        n = c.cluster_size[rows]
        assert n.sum() == hi - lo
        if hi == lo:
            continue
        assert (np.diff(c.last_ts[rows]) >= 0).all() and c.last_ts[rows].max() < snapshot
        for name in ("play_time", "completion_ratio", "position"):
            np.testing.assert_allclose((c.means[name][rows] * n).sum(), h.cross[name][lo:hi].sum(), rtol=1e-4)
        np.testing.assert_allclose((c.means["label"][rows] * n).sum(), h.label[lo:hi].sum(), rtol=1e-4)
        for name in ("duration", "popularity"):
            np.testing.assert_allclose((c.means[name][rows] * n).sum(), ds.items[name][h.item_id[lo:hi]].sum(),
                                       rtol=1e-4)
        np.testing.assert_allclose((c.mean_ts[rows] * n).sum(), h.ts[lo:hi].sum(), rtol=1e-9)
        np.testing.assert_allclose(c.means["gap_to_snapshot"][rows], snapshot - c.mean_ts[rows], rtol=1e-5)
        # No cluster mixes completion groups: per-group member counts match the behaviors' groups.
        groups = completion_groups(h.cross["completion_ratio"][lo:hi], CONFIG)
        per_group = np.bincount(c.completion_group[rows], weights=n, minlength=CONFIG.num_groups)
        np.testing.assert_array_equal(per_group, np.bincount(groups, minlength=CONFIG.num_groups))
        assert np.isin(c.rep_item_id[rows], h.item_id[lo:hi]).all()


def test_compress_dataset_invariants_and_summary(reference, ds_dir):
    ds = load_dataset(ds_dir)
    c = load_compressed(reference)
    check_invariants(c, ds, SNAPSHOT)
    m = c.manifest
    assert m["num_clusters"] == c.num_clusters and m["num_behaviors"] == c.cluster_size.sum()
    assert m["dataset_fingerprint"] == ds.manifest.fingerprint() and m["snapshot_ts"] == SNAPSHOT
    assert [p["file"] for p in m["partitions"]] == [f"part-{p:05d}.parquet" for p in range(6)]
    assert list(c.means) == ["play_time", "completion_ratio", "position", "label", "duration", "popularity",
                             "gap_to_snapshot"]
    lengths = np.diff(c.offsets)
    assert lengths[0] == 0 and lengths[1] == 1 and lengths[3] == 0  # no events / one / only after snapshot
    assert lengths[2] >= 2  # gamma + 1 behaviors cannot fit one cluster


def test_compress_snapshot_is_respected(tmp_path, reference):
    """Changing every event at or after the snapshot changes no byte of the clusters."""
    items, events = job_tables(post_snapshot_seed=7)
    other = tmp_path / "other"
    write_dataset(other, name="job", source="test", items=items, events=events, item_columns=ITEM_COLUMNS,
                  event_columns=EVENT_COLUMNS)
    run(other, tmp_path / "c")
    ref, new = folder_digest(reference), folder_digest(tmp_path / "c")
    assert {k: v for k, v in new.items() if k.endswith((".parquet", ".npy"))} == \
        {k: v for k, v in ref.items() if k.endswith((".parquet", ".npy"))}


class InterruptedRunError(Exception):
    pass


def stop_after(k):
    def hook(parts_done):
        if parts_done == k:
            raise InterruptedRunError

    return hook


def test_compress_resume_after_interruption_is_identical(tmp_path, ds_dir, reference):
    out = tmp_path / "c"
    with pytest.raises(InterruptedRunError):
        run(ds_dir, out, _after_part=stop_after(2))
    assert (out / JOB_FILE).exists() and not (out / MANIFEST_FILE).exists()
    assert len(list(out.glob("part-*.parquet"))) == 2
    with pytest.raises(DataValidationError, match="rerun"):
        load_compressed(out)
    (out / ".part-00004.parquet.x1y2.tmp").write_bytes(b"half a file")  # debris of a write cut short
    summary = run(ds_dir, out)
    assert summary.parts_skipped == 2 and summary.parts_written == 4
    assert folder_digest(out) == folder_digest(reference)


def test_compress_resume_after_sigkill_is_identical(tmp_path, ds_dir, reference):
    out = tmp_path / "c"
    script = textwrap.dedent(f"""
        import os, signal
        from twinv2.compress import ClusterConfig, compress_dataset

        def hook(parts_done):
            if parts_done == 3:
                os.kill(os.getpid(), signal.SIGKILL)

        compress_dataset({str(ds_dir)!r}, {str(out)!r}, {SNAPSHOT}, config=ClusterConfig(gamma={GAMMA}),
                         users_per_part={PART}, progress=False, _after_part=hook)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert len(list(out.glob("part-*.parquet"))) == 3 and not (out / MANIFEST_FILE).exists()
    summary = run(ds_dir, out)
    assert summary.parts_skipped == 3
    assert folder_digest(out) == folder_digest(reference)


def test_compress_rerun_of_a_finished_run_does_nothing(reference, ds_dir):
    before = folder_digest(reference)
    summary = run(ds_dir, reference)
    assert summary.already_complete and summary.parts_written == 0
    assert folder_digest(reference) == before


def test_compress_two_workers_and_other_part_sizes_give_the_same_clusters(tmp_path, ds_dir, reference):
    run(ds_dir, tmp_path / "w2", workers=2)
    assert folder_digest(tmp_path / "w2") == folder_digest(reference)
    run(ds_dir, tmp_path / "p7", users_per_part=7)
    a, b = load_compressed(reference, with_centroids=True), load_compressed(tmp_path / "p7", with_centroids=True)
    for name in ("offsets", "rep_item_id", "cluster_size", "completion_group", "first_ts", "last_ts", "mean_ts",
                 "mean_sq_dist", "centroids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def test_compress_refuses_a_folder_with_other_parameters(tmp_path, ds_dir):
    out = tmp_path / "c"
    with pytest.raises(InterruptedRunError):
        run(ds_dir, out, _after_part=stop_after(1))
    with pytest.raises(CompressionError, match=r"different parameters.*cluster_config"):
        run(ds_dir, out, config=ClusterConfig(gamma=GAMMA + 1))
    summary = run(ds_dir, out, config=ClusterConfig(gamma=GAMMA + 1), overwrite=True)
    assert summary.parts_skipped == 0 and load_compressed(out).cluster_size.max() <= GAMMA + 1


def test_compress_refuses_bad_outputs_and_snapshots(tmp_path, ds_dir):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me")
    with pytest.raises(CompressionError, match="not a compressed life-cycle folder"):
        run(ds_dir, foreign, overwrite=True)
    assert (foreign / "todo.txt").exists()
    with pytest.raises(CompressionError, match="inside the dataset"):
        run(ds_dir, ds_dir / "c")
    with pytest.raises(CompressionError, match="no behavior before"):
        compress_dataset(ds_dir, tmp_path / "early", 0, progress=False)
    assert not (tmp_path / "early").exists()


@pytest.mark.parametrize("bins", ["uniform", "quantile"])
def test_compress_incremental_keeps_the_invariants(tmp_path, ds_dir, bins):
    ds = load_dataset(ds_dir)
    base, new = tmp_path / "base", tmp_path / "new"
    run(ds_dir, base, config=ClusterConfig(gamma=GAMMA, group_bins=bins))
    before = folder_digest(base)
    later = 9_000
    summary = compress_incremental(base, ds_dir, new, later, progress=False)
    assert folder_digest(base) == before  # the input is never modified
    end1 = ds.histories.end_before(np.arange(22), np.full(22, SNAPSHOT))
    end2 = ds.histories.end_before(np.arange(22), np.full(22, later))
    assert summary.behaviors_in == (end2 - end1).sum() > 0
    c = load_compressed(new)
    assert c.snapshot_ts == later and c.manifest["incremental_from"]["snapshot_ts"] == SNAPSHOT
    assert c.num_clusters >= load_compressed(base).num_clusters
    if bins == "uniform":
        check_invariants(c, ds, later)
    else:
        assert c.cluster_size.max() <= GAMMA
        np.testing.assert_array_equal(np.add.reduceat(c.cluster_size, c.offsets[:-1])[np.diff(c.offsets) > 0],
                                      (end2 - ds.histories.offsets[:-1])[np.diff(c.offsets) > 0])


def test_compress_incremental_without_new_behaviors_only_moves_the_snapshot(tmp_path, ds_dir):
    base, out = tmp_path / "base", tmp_path / "inc"
    compress_dataset(ds_dir, base, SNAPSHOT + 1, config=CONFIG, users_per_part=PART, progress=False)
    compress_incremental(base, ds_dir, out, SNAPSHOT + 6, progress=False)  # ts are multiples of 10
    a, b = load_compressed(base, with_centroids=True), load_compressed(out, with_centroids=True)
    for name in ("offsets", "rep_item_id", "cluster_size", "first_ts", "last_ts", "mean_ts", "centroids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_allclose(b.means["gap_to_snapshot"], a.means["gap_to_snapshot"] + 5, rtol=1e-6)
    np.testing.assert_allclose(b.mean_sq_dist, a.mean_sq_dist, atol=1e-6)


def test_compress_incremental_bad_inputs(tmp_path, reference, ds_dir):
    with pytest.raises(CompressionError, match="new folder"):
        compress_incremental(reference, ds_dir, reference, SNAPSHOT + 100, progress=False)
    with pytest.raises(CompressionError, match="must be after the base snapshot"):
        compress_incremental(reference, ds_dir, tmp_path / "x", SNAPSHOT, progress=False)
    broken = tmp_path / "broken"
    shutil.copytree(reference, broken)
    np.save(broken / "item_embeddings.npy", np.zeros((5, 3), np.float32))
    with pytest.raises(EmbeddingError, match="dimension mismatch"):
        compress_incremental(broken, ds_dir, tmp_path / "y", SNAPSHOT + 100, progress=False)
    assert not (tmp_path / "y").exists()


def test_compression_stats(reference, tmp_path):
    s = compression_stats(reference, plot_path=tmp_path / "sizes.png")
    c = load_compressed(reference)
    assert s["clusters"] == c.num_clusters and s["behaviors"] == c.cluster_size.sum()
    assert s["compression_ratio"] == pytest.approx(c.num_clusters / c.cluster_size.sum())
    assert sum(s["cluster_size_histogram"]["count"]) == c.num_clusters
    assert max(s["cluster_size_histogram"]["size"]) <= GAMMA
    assert sum(s["clusters_per_group"]) == c.num_clusters and len(s["clusters_per_group"]) == 5
    assert sum(s["behaviors_per_group"]) == s["behaviors"]
    assert 0 < s["mean_sq_dist"] < 2 and s["rms_dist"] == pytest.approx(np.sqrt(s["mean_sq_dist"]))
    assert (tmp_path / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_compress_run_stats_and_embeddings(tmp_path, ds_dir, reference):
    runner = CliRunner()
    out = tmp_path / "c"
    common = ["--dataset", str(ds_dir), "--out", str(out), "--snapshot-ts", str(SNAPSHOT), "--gamma", str(GAMMA),
              "--users-per-part", str(PART), "--workers", "1", "--quiet"]
    result = runner.invoke(app, ["compress", *common, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["num_clusters"] == load_compressed(reference).num_clusters
    assert folder_digest(out) == folder_digest(reference)
    result = runner.invoke(app, ["compress", "run", *common])
    assert result.exit_code == 0 and "already complete" in result.output
    result = runner.invoke(app, ["compress", "stats", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["clusters"] == summary["num_clusters"]
    assert json.loads(result.stdout)["plot"] is None
    assert not (out / "cluster_sizes.png").exists()  # the input folder is only read (issue 9)
    result = runner.invoke(app, ["compress", "stats", str(out), "--plot", str(tmp_path / "sizes.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sizes.png").read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(app, ["compress", "embeddings", "--dataset", str(ds_dir), "--out",
                                 str(tmp_path / "e.parquet"), "--before-ts", str(SNAPSHOT), "--dim", "8"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compress", "--dataset", str(ds_dir), "--out", str(tmp_path / "c2"),
                                 "--snapshot-ts", str(SNAPSHOT), "--embeddings", str(tmp_path / "e.parquet"),
                                 "--workers", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["compress", "run", "--incremental", "--base", str(out), "--dataset", str(ds_dir),
                                 "--out", str(tmp_path / "inc"), "--snapshot-ts", "9000", "--workers", "1",
                                 "--quiet"])
    assert result.exit_code == 0, result.output
    assert load_compressed(tmp_path / "inc").snapshot_ts == 9000


@pytest.mark.parametrize("args, message", [
    (["--embeddings", "missing.npy"], "no such embedding file"),
    (["--method", "kmedoids"], "method"),
    (["--backend", "dask"], "--backend"),
    (["--incremental"], "--base"),
    (["--split-by", "genre"], "--split-by 'genre' is not an inherent categorical"),
    (["--split-by", "duration"], "expected one of category_id"),
    (["--split-by", ""], "--split-by"),
])
def test_cli_compress_errors_are_one_line(tmp_path, ds_dir, args, message):
    result = CliRunner().invoke(app, ["compress", "--dataset", str(ds_dir), "--out", str(tmp_path / "c"),
                                      "--snapshot-ts", str(SNAPSHOT), "--workers", "1", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c").exists()


def test_cli_compress_without_arguments_prints_help():
    result = CliRunner().invoke(app, ["compress"])
    assert result.exit_code == 0 and "stats" in result.output and "--snapshot-ts" in result.output


# ---- split_by: clusters within (completion group x category) ---------------------------------------------

SPLIT = ClusterConfig(gamma=GAMMA, split_by="category_id")


def check_split(c, ds, snapshot):
    """No cluster mixes categories: per user, completion group and category, the members of the clusters
    whose representative has that category are exactly the user's behaviors of that group and category; the
    recorded shares agree."""
    h = ds.histories
    category = ds.items["category_id"]
    users = np.arange(h.num_users)
    end = h.end_before(users, np.full(h.num_users, snapshot))
    for u in users:
        rows = slice(c.offsets[u], c.offsets[u + 1])
        lo, hi = h.offsets[u], end[u]
        if hi == lo:
            continue
        num_groups = SPLIT.num_groups
        key = completion_groups(h.cross["completion_ratio"][lo:hi], SPLIT).astype(np.int64) + \
            num_groups * category[h.item_id[lo:hi]]
        cluster_key = c.completion_group[rows].astype(np.int64) + num_groups * category[c.rep_item_id[rows]]
        top = int(max(key.max(), cluster_key.max())) + 1
        np.testing.assert_array_equal(np.bincount(cluster_key, weights=c.cluster_size[rows], minlength=top),
                                      np.bincount(key, minlength=top))


def test_compress_split_by_never_mixes_categories(tmp_path, ds_dir, reference):
    ds = load_dataset(ds_dir)
    out = tmp_path / "split"
    summary = run(ds_dir, out, config=SPLIT)
    c = load_compressed(out)
    check_invariants(c, ds, SNAPSHOT)
    check_split(c, ds, SNAPSHOT)
    assert summary.num_clusters > load_compressed(reference).num_clusters  # more, purer virtual items
    assert c.manifest["cluster_config"]["split_by"] == "category_id"
    assert json.loads((out / JOB_FILE).read_text())["cluster_config"]["split_by"] == "category_id"
    stats = compression_stats(out)
    assert stats["split_by"] == "category_id" and stats["member_purity"]["category_id"]["purity"] == 1.0
    assert compression_stats(reference)["member_purity"]["category_id"]["purity"] < 1.0
    # Deterministic: another run, with two workers and other parts, gives the same clusters.
    run(ds_dir, tmp_path / "again", config=SPLIT, workers=2, users_per_part=7)
    again = load_compressed(tmp_path / "again", with_centroids=True)
    c = load_compressed(out, with_centroids=True)
    for name in ("offsets", "rep_item_id", "cluster_size", "completion_group", "mean_ts", "centroids"):
        np.testing.assert_array_equal(getattr(c, name), getattr(again, name), err_msg=name)
    # A rerun with another split is refused like any other change of parameters.
    with pytest.raises(CompressionError, match=r"different parameters.*cluster_config"):
        run(ds_dir, tmp_path / "again", config=CONFIG, workers=1, users_per_part=7)


def test_compress_split_by_must_name_an_inherent_categorical(tmp_path, ds_dir):
    for bad in ("duration", "genre", "item_id"):
        with pytest.raises(ConfigError, match=rf"--split-by '{bad}' is not an inherent categorical.*category_id"):
            run(ds_dir, tmp_path / "c", config=ClusterConfig(gamma=GAMMA, split_by=bad))
    assert not (tmp_path / "c").exists()


def test_compress_incremental_split_by_joins_only_the_same_category(tmp_path, ds_dir):
    ds = load_dataset(ds_dir)
    base, new = tmp_path / "base", tmp_path / "new"
    run(ds_dir, base, config=SPLIT)
    later = 9_000
    compress_incremental(base, ds_dir, new, later, progress=False)  # split_by: the base's
    c = load_compressed(new)
    check_invariants(c, ds, later)
    check_split(c, ds, later)
    assert c.manifest["cluster_config"]["split_by"] == "category_id"
    purity = compression_stats(new)["member_purity"]
    assert purity["category_id"]["purity"] == 1.0 and purity["category_id"]["behaviors_covered"] == 1.0
    compress_incremental(base, ds_dir, tmp_path / "same", later, split_by="category_id", progress=False)
    same, ref = folder_digest(tmp_path / "same"), folder_digest(new)
    assert {k: v for k, v in same.items() if k.endswith((".parquet", ".npy"))} == \
        {k: v for k, v in ref.items() if k.endswith((".parquet", ".npy"))}


@pytest.mark.parametrize(("base_config", "split_by", "message"), [
    (CONFIG, "category_id", "built with --split-by none, not category_id"),
    (SPLIT, None, "built with --split-by category_id, not none"),
])
def test_compress_incremental_refuses_another_split(tmp_path, ds_dir, base_config, split_by, message):
    base = tmp_path / "base"
    run(ds_dir, base, config=base_config)
    with pytest.raises(CompressionError, match=message):
        compress_incremental(base, ds_dir, tmp_path / "new", 9_000, split_by=split_by, progress=False)
    assert not (tmp_path / "new").exists()


def test_compress_incremental_of_a_folder_without_member_shares(tmp_path, ds_dir, reference):
    """A base written before the shares existed: the update works; old clusters' shares are unknown."""
    import pyarrow.parquet as pq

    base = tmp_path / "old"
    shutil.copytree(reference, base)
    for name in (JOB_FILE, MANIFEST_FILE):
        meta = json.loads((base / name).read_text())
        for d in (meta, meta.get("job", {})):
            d.pop("member_share_features", None)
            d.get("cluster_config", {}).pop("split_by", None)
        (base / name).write_text(json.dumps(meta))
    for part in base.glob("part-*.parquet"):
        table = pq.read_table(part)
        pq.write_table(table.drop([n for n in table.column_names if "share_" in n]), part)
    assert compression_stats(base)["member_purity"] is None
    compress_incremental(base, ds_dir, tmp_path / "new", 9_000, progress=False)
    check_invariants(load_compressed(tmp_path / "new"), load_dataset(ds_dir), 9_000)
    purity = compression_stats(tmp_path / "new")["member_purity"]["category_id"]
    assert 0 < purity["behaviors_covered"] < 1 and 0 < purity["purity"] <= 1


def test_cli_compress_split_by(tmp_path, ds_dir):
    runner = CliRunner()
    out = tmp_path / "c"
    common = ["--dataset", str(ds_dir), "--snapshot-ts", str(SNAPSHOT), "--gamma", str(GAMMA), "--users-per-part",
              str(PART), "--workers", "1", "--quiet"]
    result = runner.invoke(app, ["compress", *common, "--out", str(out), "--split-by", "category_id", "--json"])
    assert result.exit_code == 0, result.output
    assert load_compressed(out).manifest["cluster_config"]["split_by"] == "category_id"
    result = runner.invoke(app, ["compress", "stats", str(out), "--json"])
    stats = json.loads(result.stdout)
    assert stats["split_by"] == "category_id" and stats["member_purity"]["category_id"]["purity"] == 1.0
    result = runner.invoke(app, ["compress", "stats", str(out)])
    assert result.exit_code == 0 and "member purity: category_id" in result.output
    result = runner.invoke(app, ["compress", *common, "--out", str(tmp_path / "none"), "--split-by", "none"])
    assert result.exit_code == 0, result.output
    assert load_compressed(tmp_path / "none").manifest["cluster_config"]["split_by"] is None
    inc = ["compress", "run", "--incremental", "--base", str(out), "--dataset", str(ds_dir), "--snapshot-ts",
           "9000", "--workers", "1", "--quiet"]
    result = runner.invoke(app, [*inc, "--out", str(tmp_path / "inc-bad"), "--split-by", "none"])
    assert result.exit_code == 2 and "--split-by category_id, not none" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "inc-bad").exists()
    result = runner.invoke(app, [*inc, "--out", str(tmp_path / "inc")])
    assert result.exit_code == 0, result.output
    assert load_compressed(tmp_path / "inc").manifest["cluster_config"]["split_by"] == "category_id"

"""synthesize: determinism, the data contract, streaming in chunks, safe replacement, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from tests.data.synth.conftest import TINY, events_of
from twinv2.cli import app
from twinv2.data.store import load_dataset
from twinv2.data.synth import (
    GROUND_TRUTH_FILES,
    activity_counts,
    build_items,
    generate_user,
    load_click_prob,
    synthesize,
)


def test_synthesize_same_seed_same_dataset_other_seed_differs(tiny_dir, tmp_path):
    again = tmp_path / "again"
    synthesize(again, config=TINY, seed=3, progress=False)
    for name in ("items.parquet", "events.parquet", "user_offsets.npy", *GROUND_TRUTH_FILES.values()):
        if name.endswith(".npy"):
            assert np.array_equal(np.load(tiny_dir / name), np.load(again / name)), name
        else:
            assert pq.read_table(tiny_dir / name).equals(pq.read_table(again / name)), name
    assert json.loads((tiny_dir / "manifest.json").read_text()) == json.loads((again / "manifest.json").read_text())

    other = tmp_path / "other"
    synthesize(other, config=TINY, seed=4, progress=False)
    a, b = events_of(tiny_dir), events_of(other)
    assert len(a["item_id"]) != len(b["item_id"]) or not np.array_equal(a["item_id"], b["item_id"])


def test_synthesize_seed_generator_is_converted_once(tmp_path):
    m1 = synthesize(tmp_path / "a", config=TINY, users=5, seed=np.random.default_rng(7), progress=False)
    m2 = synthesize(tmp_path / "b", config=TINY, users=5, seed=np.random.default_rng(7), progress=False)
    assert m1.notes["seed"] == m2.notes["seed"]
    assert pq.read_table(tmp_path / "a" / "events.parquet").equals(pq.read_table(tmp_path / "b" / "events.parquet"))


def test_synthesize_output_satisfies_the_data_contract(tiny_dir):
    ds = load_dataset(tiny_dir)
    m = ds.manifest
    assert (m.num_users, m.num_items) == (TINY.num_users, TINY.num_items)
    assert np.array_equal(ds.histories.lengths(), activity_counts(TINY, 3))
    roles = {c.name: (c.role, c.vocab_size) for c in m.item_columns}
    assert roles["category_id"] == ("inherent_categorical", TINY.num_categories + 1)
    assert roles["author_id"] == ("inherent_categorical", TINY.num_authors + 1)
    assert roles["raw_item_id"][0] == "raw_id"
    assert [c.name for c in m.cross_numerics] == ["play_time", "completion_ratio"]
    assert ds.items["category_id"][1:].min() >= 1 and ds.items["author_id"][1:].min() >= 1
    assert ds.items["duration"].dtype == np.float32
    # Ground truth is present and named in the manifest, outside the files models read.
    assert m.notes["ground_truth"] == GROUND_TRUTH_FILES
    for rel in GROUND_TRUTH_FILES.values():
        assert (tiny_dir / rel).exists(), rel
    latent = np.load(tiny_dir / GROUND_TRUTH_FILES["item_latent"])
    assert latent.shape == (TINY.num_items + 1, TINY.latent_dim)
    assert np.allclose(np.linalg.norm(latent[1:], axis=1), 1.0, atol=1e-5)
    assert m.notes["config"]["num_users"] == TINY.num_users
    assert 0.1 < m.notes["label_rate"] < 0.7


def test_max_events_reaches_the_written_dataset(tmp_path):
    m = synthesize(tmp_path / "d", config=TINY, users=6, max_events=7000, seed=0, progress=False)
    assert m.notes["max_user_events"] == 7000
    assert load_dataset(tmp_path / "d").histories.lengths().max() == 7000


def test_synthesize_chunking_and_streaming_match_in_memory_generation(tiny_dir, tmp_path):
    small_chunks = tmp_path / "chunks"
    synthesize(small_chunks, config=TINY, seed=3, progress=False, chunk_events=97)
    assert pq.read_table(small_chunks / "events.parquet").equals(pq.read_table(tiny_dir / "events.parquet"))
    assert pq.read_table(small_chunks / GROUND_TRUTH_FILES["interests"]).equals(
        pq.read_table(tiny_dir / GROUND_TRUTH_FILES["interests"]))
    # The streamed file is exactly the users generated one by one, concatenated.
    items = build_items(TINY, 3)
    counts = activity_counts(TINY, 3)
    written = events_of(tiny_dir)
    expected = [generate_user(items, TINY, 3, u, int(counts[u]))[0] for u in range(TINY.num_users)]
    for name, column in written.items():
        assert np.array_equal(column, np.concatenate([e[name] for e in expected])), name
    # The click probabilities stream in the same order, whatever the chunk size.
    truths = [generate_user(items, TINY, 3, u, int(counts[u]))[1] for u in range(TINY.num_users)]
    assert np.array_equal(load_click_prob(tiny_dir), np.concatenate([t.click_prob for t in truths]))
    assert np.array_equal(load_click_prob(small_chunks), load_click_prob(tiny_dir))


def test_synthesize_replaces_a_dataset_but_never_other_folders(tiny_dir, tmp_path):
    previous = tmp_path / "previous"
    synthesize(previous, config=TINY, users=3, seed=0, progress=False)
    m = synthesize(previous, config=TINY, users=4, seed=0, progress=False)
    assert load_dataset(previous).manifest.num_users == m.num_users == 4
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    (unrelated / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"without manifest\.json"):
        synthesize(unrelated, config=TINY, users=3, progress=False)
    assert (unrelated / "notes.txt").read_text() == "keep me"


def test_cli_data_synth_writes_dataset_and_prints_summary(tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--scale", "small", "--users", "12",
                                      "--seed", "1", "--max-events", "900"])
    assert result.exit_code == 0, result.output
    assert "12 users" in result.output and "max history 900" in result.output and "MiB" in result.output
    m = load_dataset(out).manifest
    assert (m.num_users, m.notes["scale"], m.notes["seed"]) == (12, "small", 1)

    bad = CliRunner().invoke(app, ["data", "synth", "--out", str(tmp_path / "bad"), "--scale", "huge"])
    assert bad.exit_code == 2 and "scale" in bad.output
    assert not (tmp_path / "bad").exists()

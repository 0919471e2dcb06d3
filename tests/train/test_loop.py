"""The training loop: end to end on generated data, exact resumption, early stopping, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import EVENT_COLUMNS, ITEM_COLUMNS, make_tiny_dataset
from tests.train.conftest import tiny_config
from twinv2.cli import app
from twinv2.data.split import make_samples
from twinv2.data.store import load_dataset, write_dataset
from twinv2.errors import CheckpointError, CompressionError, ConfigError, DataValidationError
from twinv2.train.evaluate import ACTIVITY_GROUPS, activity_groups, evaluate_checkpoint
from twinv2.train.loop import make_split, run_training, train_model

METRIC_KEYS = {"auc", "gauc", "gauc_users", "gauc_impressions", "logloss", "num_samples", "num_users"}


@pytest.fixture(scope="module")
def dataset(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir)


@pytest.fixture(scope="module")
def twin_run(dataset, tmp_path_factory):
    """One short twin run shared by the read-only tests below."""
    import io

    from rich.console import Console

    out = tmp_path_factory.mktemp("run") / "twin"
    result = train_model(dataset, out, tiny_config(model__long_term="twin", train__epochs=2), show_progress=False,
                         console=Console(file=io.StringIO()))
    return out, result


def test_train_model_end_to_end_writes_run_folder(twin_run):
    out, result = twin_run
    for name in ("best.pt", "last.pt", "history.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert result.steps == 2 * -(-result.num_train_samples // 64)
    assert len(result.history) == 2 and result.epochs_completed == 2
    assert 0.0 <= result.best["gauc"] <= 1.0 and result.best["logloss"] > 0
    history = json.loads((out / "history.json").read_text())
    assert [v["step"] for v in history["validations"]] == [v["step"] for v in result.history]
    assert history["loss_curve"] and all(np.isfinite(loss) for _, loss in history["loss_curve"])


def test_evaluate_checkpoint_reports_overall_and_groups(twin_run, dataset):
    out, _ = twin_run
    report = evaluate_checkpoint(out / "best.pt", "test", show_progress=False)
    assert set(report) >= METRIC_KEYS and report["split"] == "test" and report["model"] == "twin"
    assert set(report["groups"]) == set(ACTIVITY_GROUPS)
    assert sum(g["num_samples"] for g in report["groups"].values()) == report["num_samples"]
    assert sum(g["num_users"] for g in report["groups"].values()) == report["num_users"]
    assert 0.0 <= report["auc"] <= 1.0 and report["gauc_impressions"] <= report["num_samples"]
    # The same checkpoint evaluated twice gives the same numbers (eval mode, no randomness).
    again = evaluate_checkpoint(out / "best.pt", "test", dataset=dataset, show_progress=False)
    assert again["auc"] == report["auc"] and again["logloss"] == report["logloss"]


def test_evaluate_cli_json_has_the_documented_keys(twin_run):
    out, _ = twin_run
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(out / "best.pt"), "--split", "valid",
                                   "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert METRIC_KEYS | {"split", "model", "groups", "group_thresholds"} <= set(report)
    for group in report["groups"].values():
        assert METRIC_KEYS | {"history_length_min", "history_length_max"} <= set(group)


def test_activity_groups_are_user_tertiles(dataset):
    split = make_split(dataset, tiny_config())
    samples = make_samples(dataset, split, "test")
    lo, _ = split.window("test")
    groups = activity_groups(dataset, samples, lo)
    q1, q2 = groups.thresholds
    # Each user sits in exactly one group, decided by its history length before the window.
    for u in np.unique(samples.user_id):
        assert len(np.unique(groups.group[samples.user_id == u])) == 1
    h = dataset.histories
    lengths = h.end_before(samples.user_id, np.full(len(samples), lo)) - h.offsets[samples.user_id]
    assert np.array_equal(groups.history_length, lengths)
    assert np.all((groups.group == 0) == (lengths <= q1))
    assert np.all((groups.group == 2) == (lengths > q2))
    users = np.unique(samples.user_id)
    assert q1 == pytest.approx(np.quantile(lengths[np.unique(samples.user_id, return_index=True)[1]], 1 / 3))
    assert len(users) >= 3


def test_resume_after_a_budget_stop_equals_an_uninterrupted_run(dataset, tmp_path, quiet):
    cfg = tiny_config(model__long_term="twin", train__epochs=2, train__patience=0)
    full = train_model(dataset, tmp_path / "full", cfg, show_progress=False, console=quiet)
    # Stop mid-epoch (3 of 5 batches), then resume with the cap lifted.
    cut = train_model(dataset, tmp_path / "cut", tiny_config(model__long_term="twin", train__epochs=2,
                                                             train__patience=0, train__max_steps=3),
                      show_progress=False, console=quiet)
    assert cut.steps == 3 and cut.epochs_completed == 0
    resumed = train_model(dataset, tmp_path / "cut", cfg, resume=True, show_progress=False, console=quiet)
    assert resumed.steps == full.steps
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key
    assert a["train_state"]["loss_curve"] == b["train_state"]["loss_curve"]


def test_resume_refuses_a_changed_config(dataset, tmp_path, quiet):
    cfg = tiny_config(model__long_term="twin", train__max_steps=2)
    train_model(dataset, tmp_path / "r", cfg, show_progress=False, console=quiet)
    with pytest.raises(ConfigError, match=r"differs .* in model\.esu_size"):
        train_model(dataset, tmp_path / "r", tiny_config(model__long_term="twin", model__esu_size=4),
                    resume=True, show_progress=False, console=quiet)


def test_train_refuses_to_overwrite_a_run_without_resume(twin_run, dataset):
    out, _ = twin_run
    with pytest.raises(FileExistsError, match="--resume"):
        train_model(dataset, out, tiny_config(model__long_term="twin"), show_progress=False)


def test_resume_without_a_run_is_a_checkpoint_error(dataset, tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_model(dataset, tmp_path / "none", tiny_config(model__long_term="twin"), resume=True)


def test_early_stopping_stops_after_patience_validations_without_improvement(dataset, tmp_path, quiet):
    # A learning rate too small to change any score: GAUC never improves after the first validation.
    cfg = tiny_config(model__long_term="avg_pool", train__epochs=6, train__patience=2, optim__dense="sgd",
                      optim__embedding="sgd", optim__dense_lr=1e-20, optim__embedding_lr=1e-20)
    result = train_model(dataset, tmp_path / "es", cfg, show_progress=False, console=quiet)
    assert result.stopped_early and len(result.history) == 3 and result.epochs_completed == 3
    assert result.best["step"] == result.history[0]["step"]


def test_step_budget_on_an_eval_step_validates_once_and_is_not_an_early_stop(dataset, tmp_path, quiet):
    # Regression: with eval_every dividing max_steps, the last step used to be validated twice, and the
    # repeat (never an improvement) counted against patience.
    cfg = tiny_config(model__long_term="avg_pool", train__max_steps=2, train__eval_every=2, train__patience=1)
    result = train_model(dataset, tmp_path / "budget", cfg, show_progress=False, console=quiet)
    steps = [entry["step"] for entry in result.history]
    assert steps == [2]
    assert not result.stopped_early


def test_train_is_deterministic_for_a_seed(dataset, tmp_path, quiet):
    cfg = tiny_config(model__long_term="din", train__max_steps=3)
    a = train_model(dataset, tmp_path / "a", cfg, show_progress=False, console=quiet)
    b = train_model(dataset, tmp_path / "b", cfg, show_progress=False, console=quiet)
    assert a.loss_curve == b.loss_curve and a.best["auc"] == b.best["auc"]


def test_twinv2_without_compressed_is_a_clear_error(dataset, tmp_path, quiet):
    with pytest.raises(ConfigError, match="--compressed"):
        train_model(dataset, tmp_path / "v2", tiny_config(model__long_term="twinv2"), show_progress=False,
                    console=quiet)


def test_unknown_model_name_is_a_clear_error(tiny_dataset_dir, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown long-term model .twin3.*twinv2, twin"):
        run_training(tmp_path / "x", dataset=tiny_dataset_dir, model="twin3")


def test_cli_train_unknown_model_exits_2_with_one_line(tiny_dataset_dir, tmp_path):
    res = CliRunner().invoke(app, ["train", "--dataset", str(tiny_dataset_dir), "--model", "twin3", "--out",
                                   str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown long-term model 'twin3'" in res.output


def test_cli_train_applies_set_overrides(tiny_dataset_dir, tmp_path):
    args = ["train", "--dataset", str(tiny_dataset_dir), "--model", "avg_pool", "--out", str(tmp_path / "c"),
            "--json", "--max-train-samples", "100"]
    for key, value in {"model.id_dim": 8, "model.mlp_dims": "[8]", "data.long_len": 20, "train.device": "cpu",
                       "split.snapshot": 0.5, "split.valid": 0.7, "split.test": 0.85,
                       "train.batch_size": 50, "train.epochs": 1}.items():
        args += ["--set", f"{key}={value}"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["steps"] == 2 and summary["train_samples"] == 100
    cfg = (tmp_path / "c" / "config.yaml").read_text()
    assert "id_dim: 8" in cfg and "long_len: 20" in cfg


def test_empty_split_is_a_clear_error(tmp_path, quiet):
    # Two distinct timestamps only: the valid window [s + 1, s + 2) holds no event.
    items, events = _two_timestamp_tables()
    write_dataset(tmp_path / "ds", name="t", source="test", items=items, events=events, item_columns=ITEM_COLUMNS,
                  event_columns=EVENT_COLUMNS)
    with pytest.raises(DataValidationError, match=r"events\.parquet: column 'ts': expected events in the valid "
                                                  r"window"):
        train_model(tmp_path / "ds", tmp_path / "run", tiny_config(model__long_term="twin", split__snapshot=0.8,
                                                                   split__valid=0.9, split__test=0.95),
                    show_progress=False, console=quiet)


def _two_timestamp_tables():
    from tests.conftest import tiny_tables

    items, events = tiny_tables(num_events=500)
    ts = np.where(np.arange(events.num_rows) % 2 == 0, 0, 100).astype(np.int64)
    users = events.column("user_id").to_numpy()
    order = np.lexsort((ts, users))
    events = events.take(pa.array(order)).set_column(2, "ts", pa.array(ts[order], pa.int64()))
    return items, events


def test_checkpoint_and_other_dataset_do_not_match(twin_run, tmp_path):
    out, _ = twin_run
    other = make_tiny_dataset(tmp_path / "other", seed=1, num_events=2000)
    with pytest.raises(CheckpointError, match="do not match: 'num_events'"):
        evaluate_checkpoint(out / "best.pt", "test", dataset=other, show_progress=False)


@pytest.fixture(scope="module")
def clusters(dataset, tmp_path_factory):
    """Compressed life cycles of the tiny dataset at the train snapshot and at the test start."""
    from twinv2.compress import compress_dataset

    split = make_split(dataset, tiny_config())
    root = tmp_path_factory.mktemp("clusters")
    for name, ts in (("train", split.snapshot_ts), ("test", split.test_start_ts)):
        compress_dataset(dataset.path, root / name, ts, workers=1, progress=False)
    return root / "train", root / "test"


def test_twinv2_trains_and_evaluates_with_refreshed_clusters(dataset, clusters, tmp_path, quiet):
    at_train, at_test = clusters
    result = train_model(dataset, tmp_path / "v2", tiny_config(model__long_term="twinv2"), compressed=at_train,
                         show_progress=False, console=quiet)
    assert np.isfinite(result.best["gauc"])
    stale = evaluate_checkpoint(result.best_checkpoint, "test", show_progress=False)
    fresh = evaluate_checkpoint(result.best_checkpoint, "test", compressed=at_test, show_progress=False)
    assert stale["num_samples"] == fresh["num_samples"] and 0 < fresh["auc"] < 1
    # The refreshed clusters are read: other sequences, other predictions (issue 9: ignoring them passed).
    assert fresh["logloss"] != stale["logloss"]
    # Clusters built at the test start hold behaviors after the first train and valid samples.
    for split in ("train", "valid"):
        with pytest.raises(CompressionError, match=f"after the start of the {split} window"):
            evaluate_checkpoint(result.best_checkpoint, split, compressed=at_test, show_progress=False)
    with pytest.raises(CompressionError, match="after the start of the train window"):
        train_model(dataset, tmp_path / "leak", tiny_config(model__long_term="twinv2"), compressed=at_test,
                    show_progress=False, console=quiet)


def test_compressed_folder_of_another_dataset_is_a_clear_error(clusters, tmp_path, quiet):
    at_train, _ = clusters
    other = make_tiny_dataset(tmp_path / "other", seed=1)  # same schema and users, other events
    with pytest.raises(CompressionError, match="compressed life cycles of another dataset"):
        train_model(other, tmp_path / "run", tiny_config(model__long_term="twinv2"), compressed=at_train,
                    show_progress=False, console=quiet)


def test_cli_resume_continues_a_run_from_its_stored_dataset_and_config(tiny_dataset_dir, tmp_path):
    out = tmp_path / "r"
    args = ["train", "--dataset", str(tiny_dataset_dir), "--model", "avg_pool", "--out", str(out), "--json"]
    tiny = ["model.id_dim=8", "model.mlp_dims=[8]", "data.long_len=20", "train.device=cpu", "train.batch_size=64",
            "split.snapshot=0.5", "split.valid=0.7", "split.test=0.85", "train.max_steps=2", "train.epochs=1"]
    first = CliRunner().invoke(app, args + [a for s in tiny for a in ("--set", s)])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["steps"] == 2
    resumed = CliRunner().invoke(app, ["train", "--out", str(out), "--resume", "--json", "--set",
                                       "train.max_steps=null"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads(resumed.stdout)["steps"] == -(-int(json.loads(first.stdout)["train_samples"]) // 64)


def test_cli_export_embeddings_writes_the_checkpoint_table(twin_run, tmp_path):
    from twinv2.compress import load_embedding_file

    out, _ = twin_run
    res = CliRunner().invoke(app, ["export-embeddings", "--checkpoint", str(out / "best.pt"), "--out",
                                   str(tmp_path / "emb.parquet")])
    assert res.exit_code == 0, res.output
    ids, matrix = load_embedding_file(tmp_path / "emb.parquet")
    table = torch.load(out / "best.pt", weights_only=True)["item_embeddings"].numpy()
    assert np.array_equal(matrix, table[1:]) and ids[0] == 1 and len(ids) == table.shape[0] - 1


def test_evaluate_cli_diagnostics_report_the_gsu(twin_run):
    """`twinv2 evaluate --diagnostics`: the GSU's retrieval diagnostics in the JSON and in the table, and the
    recall recorded at every validation of the run."""
    out, result = twin_run
    res = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(out / "best.pt"), "--split", "valid",
                                   "--diagnostics", "--json"])
    assert res.exit_code == 0, res.output
    diag = json.loads(res.stdout)["diagnostics"]
    assert diag["learned_gsu"] and 0.0 <= diag["category_recall"] <= 1.0
    assert 0.0 <= diag["category_hit_rate"] <= 1.0 and diag["esu_size"] == tiny_config().model.esu_size
    table = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(out / "best.pt"), "--split", "valid",
                                     "--diagnostics"])
    assert table.exit_code == 0 and "GSU category hit rate" in table.stdout
    assert all(0.0 <= v["gsu_category_recall"] <= 1.0 for v in result.history)

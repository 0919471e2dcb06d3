"""``twinv2 data describe``."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from twinv2.cli import app
from twinv2.data.describe import describe_dataset
from twinv2.data.store import load_dataset


def test_describe_counts_match_dataset(tiny_dataset_dir, tmp_path):
    summary = describe_dataset(tiny_dataset_dir, plot_path=tmp_path / "h.png")
    h = load_dataset(tiny_dataset_dir).histories
    assert summary["events"] == len(h.ts) == 3000
    assert summary["users"] == h.num_users
    assert summary["history_length"]["max"] == int(h.lengths().max())
    assert summary["history_length"]["p50"] == float(np.percentile(h.lengths(), 50))
    assert abs(summary["label_rate"] - h.label.mean()) < 1e-12
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_describe_cli_json_prints_exactly_one_object(tiny_dataset_dir, tmp_path):
    result = CliRunner().invoke(app, ["data", "describe", str(tiny_dataset_dir), "--json",
                                      "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    for key in ("users", "items", "events", "label_rate"):
        assert key in obj
    assert set(obj["history_length"]) >= {"p50", "p90", "p99", "max"}


def test_describe_cli_missing_folder_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["data", "describe", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "manifest" in result.output


def test_describe_writes_nothing_into_the_dataset_without_plot(tiny_dataset_dir, tmp_path):
    """Issue 9: the histogram went into the input folder by default (and crashed on a read-only one)."""
    before = sorted(p.name for p in tiny_dataset_dir.rglob("*"))
    result = CliRunner().invoke(app, ["data", "describe", str(tiny_dataset_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["plot"] is None
    assert sorted(p.name for p in tiny_dataset_dir.rglob("*")) == before

"""`twinv2 demo --quick`: the whole pipeline on the small synthetic scale, end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from twinv2.cli import app
from twinv2.data.headroom import SAMPLE_BUCKETS
from twinv2.demo import DEMO_MODELS
from twinv2.errors import ConfigError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    # The models are named explicitly: the CLI's --models default is cli.py's (it should be DEMO_MODELS).
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out), "--device", "cpu",
                                   "--models", ",".join(DEMO_MODELS)])
    return out, res


def test_demo_quick_writes_report_plots_and_summary(demo_run):
    out, res = demo_run
    assert res.exit_code == 0, res.output
    assert f"report: {out / 'report.md'}" in " ".join(res.output.split())
    report = (out / "report.md").read_text()
    for plot in ("gauc_by_model.png", "gauc_by_group.png", "gauc_by_bucket.png", "loss_curves.png"):
        path = out / "plots" / plot
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG", plot
        assert f"(plots/{plot})" in report
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["models"]) == list(DEMO_MODELS) == ["twinv2", "twin", "sim_hard"]
    for name in DEMO_MODELS:
        test = summary["models"][name]["test"]
        assert 0.0 < test["auc"] < 1.0 and 0.0 < test["gauc"] < 1.0 and test["logloss"] > 0
        assert f"| {name} | {test['auc']:.4f} | {test['gauc']:.4f} |" in report
        assert (out / "models" / name / "best.pt").is_file()
        # AUC / GAUC per headroom bucket, partitioning the test samples.
        assert set(test["buckets"]) == set(SAMPLE_BUCKETS)
        assert sum(b["num_samples"] for b in test["buckets"].values()) == test["num_samples"]
        # Ground-truth NDCG@k of the model's retrieval (all three have one), sim_hard's beside it.
        assert 0.0 <= test["diagnostics"]["gt_ndcg"] <= 1.0 + 1e-9
        assert test["diagnostics"]["gt_ndcg_sim_hard"] is not None
    # Equal budgets: every model saw the same number of samples with the same L and k.
    m = summary["models"]
    assert m["twinv2"]["train_samples"] == m["twin"]["train_samples"] == m["sim_hard"]["train_samples"]
    # The offline job on a cadence: the first version at the split snapshot, one serving the test window.
    versions = summary["compression"]["versions"]
    assert versions[0]["snapshot_ts"] == summary["split"]["snapshot_ts"]
    assert any(v["snapshot_ts"] == summary["split"]["test_start_ts"] for v in versions)
    assert all(v["num_clusters"] < v["num_behaviors"] for v in versions)
    # The report carries the headroom statistic and the GSU diagnostics beside the scores.
    assert "Life-cycle headroom of the test window" in report and "GSU diagnostics" in report
    assert "Per headroom bucket" in report and "Ground-truth retrieval quality" in report
    assert "twinv2 - sim_hard: GAUC" in report
    assert summary["models"]["twin"]["test"]["diagnostics"]["learned_gsu"]
    assert 0.0 <= summary["models"]["twinv2"]["test"]["diagnostics"]["category_recall"] <= 1.0


def test_demo_reuses_the_dataset_of_the_same_scale_and_seed(demo_run):
    import io

    from rich.console import Console

    from twinv2.demo import _synth_matches, run_demo

    out, res = demo_run
    assert res.exit_code == 0
    assert _synth_matches(out / "data", "small", 0)
    assert not _synth_matches(out / "data", "small", 1) and not _synth_matches(out / "data", "default", 0)
    before = (out / "data" / "events.parquet").stat().st_mtime_ns
    result = run_demo(out, models=["twin"], quick=True, device="cpu", console=Console(file=io.StringIO()))
    assert (out / "data" / "events.parquet").stat().st_mtime_ns == before
    assert list(result.results["models"]) == ["twin"] and result.report_path.is_file()


def test_demo_rejects_unknown_models(tmp_path):
    from twinv2.demo import run_demo

    with pytest.raises(ConfigError, match="unknown model twin3"):
        run_demo(tmp_path / "x", models=["twin3"], quick=True)
    res = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path / "y"), "--models", "twin3"])
    assert res.exit_code == 2 and "unknown model twin3" in res.output

"""Per-headroom-bucket metrics of an evaluation: the buckets partition the samples, each block is the shared
metric function on its rows, and the rendered report shows them."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from rich.console import Console

from twinv2.data.headroom import SAMPLE_BUCKETS, sample_headroom_buckets
from twinv2.data.split import TemporalSplit, make_samples
from twinv2.data.store import load_dataset
from twinv2.train.evaluate import metrics_report, render_evaluation
from twinv2.train.metrics import evaluate_predictions


@pytest.fixture(scope="module")
def dataset(tiny_dataset_dir):
    return load_dataset(tiny_dataset_dir)


@pytest.mark.filterwarnings("ignore::twinv2.train.metrics.UndefinedMetricWarning")
def test_metrics_report_has_one_block_per_headroom_bucket(dataset):
    split = TemporalSplit.from_fractions(dataset.histories.ts, snapshot=0.5, valid=0.7, test=0.85)
    samples = make_samples(dataset, split, "test")
    probs = np.random.default_rng(0).uniform(0.01, 0.99, len(samples))
    L = 30
    report = metrics_report(dataset, samples, probs, split.window("test")[0], long_len=L)
    assert set(report["buckets"]) == set(SAMPLE_BUCKETS)
    assert report["bucket_definition"]["long_len"] == L and report["bucket_definition"]["category"] == "category_id"
    assert sum(b["num_samples"] for b in report["buckets"].values()) == report["num_samples"]
    buckets = sample_headroom_buckets(dataset, samples, L)
    for code, name in enumerate(SAMPLE_BUCKETS):
        sel = buckets.bucket == code
        block = report["buckets"][name]
        assert block["num_samples"] == int(sel.sum())
        if sel.sum() and 0 < samples.label[sel].sum() < sel.sum():
            ref = evaluate_predictions(samples.user_id[sel], samples.label[sel], probs[sel])
            assert block["auc"] == pytest.approx(ref["auc"]) and block["gauc_users"] == ref["gauc_users"]
            assert block["gauc"] == pytest.approx(ref["gauc"]) or math.isnan(ref["gauc"])
    # Precomputed buckets (reused across models) give the same report; no long_len, no buckets.
    again = metrics_report(dataset, samples, probs, split.window("test")[0], buckets=buckets)
    assert again["buckets"]["beyond_L"]["num_samples"] == report["buckets"]["beyond_L"]["num_samples"]
    assert "buckets" not in metrics_report(dataset, samples, probs, split.window("test")[0])
    assert "buckets" not in metrics_report(dataset, samples, probs, 0, by_group=False, long_len=L)

    report.update(model="m", split="test")
    out = io.StringIO()
    Console(file=out, width=200).print(render_evaluation(report))
    assert "beyond_L (L = 30)" in out.getvalue() and "within_50" in out.getvalue()

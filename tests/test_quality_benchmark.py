"""benchmarks/quality.py: the paired-comparison arithmetic, the targets and the variant lineup."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality_benchmark", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_paired_difference_hand_computed(quality):
    # Diffs 0.02, 0.03, 0.01: mean 0.02, sample std 0.01, se 0.01 / sqrt(3) = 0.00577 -> ahead.
    got = quality.paired_difference({0: 0.70, 1: 0.72, 2: 0.71}, {0: 0.68, 1: 0.69, 2: 0.70})
    assert got["seeds"] == [0, 1, 2] and got["n"] == 3
    assert got["diffs"] == pytest.approx([0.02, 0.03, 0.01])
    assert got["mean"] == pytest.approx(0.02) and got["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert got["ahead"] is True and got["behind"] is False
    # Positive in every seed but within 2 standard errors: diffs 0.05, 0.001, 0.001 (se 0.0163, mean 0.0173).
    wide = quality.paired_difference({0: 0.55, 1: 0.501, 2: 0.501}, {0: 0.5, 1: 0.5, 2: 0.5})
    assert wide["mean"] == pytest.approx(0.052 / 3) and wide["ahead"] is False
    # One seed negative: not ahead, not behind.
    mixed = quality.paired_difference({0: 0.52, 1: 0.499, 2: 0.53}, {0: 0.5, 1: 0.5, 2: 0.5})
    assert mixed["ahead"] is False and mixed["behind"] is False
    # The mirror image is behind.
    assert quality.paired_difference({0: 0.68, 1: 0.69, 2: 0.70}, {0: 0.70, 1: 0.72, 2: 0.71})["behind"] is True
    # Only common seeds count; NaN drops the seed; one seed cannot be judged.
    part = quality.paired_difference({0: 0.6, 1: 0.7, 2: float("nan")}, {0: 0.5, 2: 0.5})
    assert part["seeds"] == [0] and part["se"] is None and part["ahead"] is None and part["behind"] is None


def _record(name, seed, gauc, high=None, beyond=None):
    buckets = {b: {"gauc": beyond if b == "beyond_L" else gauc, "auc": gauc, "num_samples": 10}
               for b in ("within_50", "within_L", "beyond_L", "never")}
    return {"name": name, "seed": seed, "gauc": gauc, "groups": {"high": {"gauc": high or gauc}},
            "buckets": buckets}


def test_paired_comparisons_and_targets(quality):
    records = [_record("twinv2", s, 0.70 + 0.01 * s, beyond=0.60 + 0.01 * s) for s in range(3)]
    records += [_record("twin", s, 0.68 + 0.01 * s, beyond=0.60) for s in range(3)]
    records += [_record("sim_hard", s, g) for s, g in enumerate((0.69, 0.695, 0.75))]
    paired = quality.paired_comparisons(records, ["twinv2", "twin", "sim_hard"])
    assert set(paired) == {"twinv2_vs_twin", "twinv2_vs_sim_hard", "twin_vs_sim_hard"}
    assert paired["twinv2_vs_twin"]["ahead"] is True and paired["twinv2_vs_twin"]["mean"] == pytest.approx(0.02)
    assert paired["twinv2_vs_twin"]["buckets"]["beyond_L"]["diffs"] == pytest.approx([0.0, 0.01, 0.02])
    assert paired["twinv2_vs_sim_hard"]["ahead"] is False  # behind in seed 2
    results = {n: {"gauc_high_mean": 0.7 if n == "twinv2" else 0.6, "oracle_headroom_share": 0.65,
                   "gsu_category_recall": 0.95, "gsu_gt_ndcg": 0.5} for n in ("twinv2", "twin", "sim_hard")}
    targets, detail = quality.compute_targets(results, paired, "lifecycle")
    assert targets["lifecycle_twinv2_ahead_of_all"] is False and targets["lifecycle_twinv2_ahead_of_twin"] is True
    assert targets["lifecycle_twinv2_best_high_tertile"] is True
    assert targets["lifecycle_best_oracle_share_at_least_0.6"] is True
    assert targets["default_twin_not_behind_sim_hard"] is None  # another regime's target
    assert targets["gsu_recall_at_least_0.9"] is True and targets["gt_ndcg_reported"] is True
    assert set(detail) == set(targets)
    default, _ = quality.compute_targets(results, paired, "default")
    assert default["lifecycle_twinv2_ahead_of_all"] is None
    assert default["default_twin_not_behind_sim_hard"] is True  # below in every seed, but within 2 s.e.


def test_variant_lineup(quality):
    names = [v.name for v in quality.MODEL_VARIANTS]
    assert "dare" in names and "sim_hard" in names
    dare = next(v for v in quality.MODEL_VARIANTS if v.name == "dare")
    assert dare.model_overrides == {"relevance": "paper"}
    ablations = {a.name: a for a in quality.ABLATIONS}
    assert ablations["twinv2_paper"].model_overrides == {"relevance": "paper"}
    assert ablations["twin_paper"].model == "twin"
    full = quality.REFERENCES[0]
    assert full.name == "sim_hard_full" and full.model == "sim_hard" and full.long_len == "full"
    args = quality.parse_args(["--out", "x.json"])
    assert args.max_train_samples is None and args.max_test_samples is None  # the full budget by default
    assert args.epochs > 1 and args.patience > 0

"""Tests of twinv2.train.metrics: the fast vectorised metrics against hand computations and the slow
per-user scikit-learn reference, plus invariants (row order, one-class users, inputs untouched) and errors."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twinv2.errors import Twinv2Error
from twinv2.train import metrics
from twinv2.train.metrics import (
    GaucResult,
    MetricInputError,
    UndefinedMetricWarning,
    auc,
    evaluate_predictions,
    gauc,
    log_loss,
    per_user_auc,
    reference_gauc,
    reference_per_user_auc,
)


@pytest.fixture(scope="module")
def sklearn_metrics():
    """scikit-learn, the reference of the comparison tests only: without it those tests skip, while the
    hand-computed ones above and below still run (a module-level importorskip would skip them all)."""
    return pytest.importorskip("sklearn.metrics")


# Few distinct scores, so that ties (within and across users) are the common case.
TIED_SCORES = [-2.0, -0.0, 0.0, 0.25, 0.5, 3.0]
rows_strategy = st.lists(
    st.tuples(st.integers(0, 6), st.integers(0, 1), st.sampled_from(TIED_SCORES)), min_size=1, max_size=120
)


def _columns(rows):
    users, labels, scores = zip(*rows, strict=True)
    return np.array(users, dtype=np.int64), np.array(labels, dtype=np.int8), np.array(scores)


def _random_data(seed: int, n: int, users: int, decimals: int):
    """Random impressions with heavy ties: float32 scores rounded to `decimals` decimals."""
    rng = np.random.default_rng(seed)
    user_ids = rng.integers(0, users, n)
    affinity = rng.normal(size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-affinity))).astype(np.int8)
    scores = np.round(1 / (1 + np.exp(-(affinity + rng.normal(size=n)))), decimals).astype(np.float32)
    return user_ids, labels, scores


def _assert_same_per_user(fast, slow) -> None:
    np.testing.assert_array_equal(fast.user_ids, slow.user_ids)
    np.testing.assert_array_equal(fast.impressions, slow.impressions)
    np.testing.assert_array_equal(fast.positives, slow.positives)
    np.testing.assert_array_equal(np.isnan(fast.auc), np.isnan(slow.auc))
    np.testing.assert_allclose(fast.auc, slow.auc, rtol=0, atol=1e-9)


def _assert_same_gauc(fast: GaucResult, slow: GaucResult) -> None:
    assert (fast.users, fast.impressions, fast.users_skipped, fast.impressions_skipped) == (
        slow.users,
        slow.impressions,
        slow.users_skipped,
        slow.impressions_skipped,
    )
    if slow.users == 0:
        assert math.isnan(fast.gauc)
    else:
        assert fast.gauc == pytest.approx(slow.gauc, abs=1e-9)


# ---------------------------------------------------------------------------------------------- hand-computed


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),
        ([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], 0.0),
        ([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5], 0.5),  # all tied: every pair counts 1/2
        ([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.8], 0.875),  # (1 + 1 + 1 + 1/2) / 4 pairs
        ([0, 1], [-0.0, 0.0], 0.5),  # -0.0 and 0.0 are the same score
        ([1, 0, 0], [2, 2, 1], 0.75),  # integer scores; (1/2 + 1) / 2
        ([True, False, True], [0.3, 0.9, 0.9], 0.25),  # bool labels; (0 + 1/2) / 2
    ],
)
def test_auc_hand_computed_toys(labels, scores, expected):
    assert auc(labels, scores) == pytest.approx(expected, abs=1e-15)


def test_gauc_hand_computed_toy():
    # user 10: positive 0.9 vs negatives {0.1, 0.9}: 1 + 1/2 of 2 pairs -> AUC 0.75 (3 impressions)
    # user 20: positives {0.2, 0.7} vs negatives {0.3, 0.1}: 0.2 > 0.1, 0.2 < 0.3, 0.7 > both -> 3/4 (4)
    # user 30: only negatives -> skipped (2 impressions); user 40: only a positive -> skipped (1 impression)
    user_ids = [10, 10, 10, 20, 20, 20, 20, 30, 30, 40]
    labels = [1, 0, 0, 1, 0, 1, 0, 0, 0, 1]
    scores = [0.9, 0.1, 0.9, 0.2, 0.3, 0.7, 0.1, 0.5, 0.6, 0.4]
    result = gauc(user_ids, labels, scores)
    assert result == GaucResult(
        gauc=pytest.approx((3 * 0.75 + 4 * 0.75) / 7),
        users=2,
        impressions=7,
        users_skipped=2,
        impressions_skipped=3,
    )
    per_user = per_user_auc(user_ids, labels, scores)
    assert per_user.user_ids.tolist() == [10, 20, 30, 40]
    assert per_user.impressions.tolist() == [3, 4, 2, 1]
    assert per_user.positives.tolist() == [1, 2, 0, 1]
    np.testing.assert_allclose(per_user.auc, [0.75, 0.75, np.nan, np.nan])


def test_gauc_weights_users_by_impressions():
    # user 1: AUC 1 over 2 impressions; user 2: AUC 0 over 4 impressions -> (2 * 1 + 4 * 0) / 6
    result = gauc([1, 1, 2, 2, 2, 2], [1, 0, 1, 0, 0, 0], [0.9, 0.1, 0.1, 0.2, 0.3, 0.4])
    assert result.gauc == pytest.approx(1 / 3, abs=1e-15)


def test_log_loss_hand_computed_toy():
    expected = -(math.log(0.8) + math.log(0.6) + math.log(0.5)) / 3
    assert log_loss([1, 0, 1], [0.8, 0.4, 0.5]) == pytest.approx(expected, rel=1e-12)


def test_log_loss_clips_probabilities_to_eps():
    # A certain wrong prediction costs -ln(eps), not infinity; a certain right one costs -ln(1 - eps).
    assert log_loss([1, 0], [0.0, 0.0], eps=1e-3) == pytest.approx(-(math.log(1e-3) + math.log(1 - 1e-3)) / 2)
    assert math.isfinite(log_loss([1], [0.0]))


# --------------------------------------------------------------------------------------- against the reference


@settings(max_examples=150, deadline=None)
@given(rows_strategy)
def test_gauc_matches_sklearn_reference_with_heavy_ties(sklearn_metrics, rows):
    user_ids, labels, scores = _columns(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        _assert_same_per_user(per_user_auc(user_ids, labels, scores), reference_per_user_auc(user_ids, labels, scores))
        _assert_same_gauc(gauc(user_ids, labels, scores), reference_gauc(user_ids, labels, scores))


@settings(max_examples=150, deadline=None)
@given(rows_strategy)
def test_auc_matches_sklearn_with_heavy_ties(sklearn_metrics, rows):
    _, labels, scores = _columns(rows)
    if labels.min() == labels.max():
        with pytest.warns(UndefinedMetricWarning, match="AUC is undefined"):
            assert math.isnan(auc(labels, scores))
    else:
        assert auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_per_user_auc_matches_reference_on_random_data(sklearn_metrics, seed):
    user_ids, labels, scores = _random_data(seed, n=20_000, users=400, decimals=1)
    fast = per_user_auc(user_ids, labels, scores)
    _assert_same_per_user(fast, reference_per_user_auc(user_ids, labels, scores))
    assert fast.auc[~np.isnan(fast.auc)].std() > 0.05  # the data is varied enough for the check to bite
    _assert_same_gauc(gauc(user_ids, labels, scores), reference_gauc(user_ids, labels, scores))
    assert auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-9)


def test_gauc_same_for_string_sparse_and_dense_user_ids():
    user_ids, labels, scores = _random_data(2, n=5_000, users=200, decimals=2)
    dense = gauc(user_ids, labels, scores)
    sparse = gauc(user_ids * 7_919_000_000_007 - 2**62, labels, scores)  # factorised, not used as codes
    strings = gauc(np.char.add("user-", user_ids.astype(str)), labels, scores)
    huge_unsigned = gauc(user_ids.astype(np.uint64) + np.uint64(2**63 + 5), labels, scores)  # dense, > 2**63
    assert dense == sparse == strings == huge_unsigned
    per_user = per_user_auc(user_ids.astype(str), labels, scores)
    assert per_user.user_ids.dtype.kind == "U"


@pytest.mark.parametrize(
    ("user_ids", "expected_ids"),
    [
        (np.array([127, -128, 127, -128], dtype=np.int8), [-128, 127]),  # the span overflows int8
        (np.array([2**64 - 1, 2**64 - 3, 2**64 - 1, 2**64 - 3], dtype=np.uint64), [2**64 - 3, 2**64 - 1]),
        (np.array([-(2**63), 2**63 - 1, -(2**63), 2**63 - 1]), [-(2**63), 2**63 - 1]),  # factorised
    ],
)
def test_per_user_auc_returns_extreme_integer_ids_unchanged(user_ids, expected_ids):
    result = per_user_auc(user_ids, [1, 0, 0, 1], [0.9, 0.1, 0.2, 0.8])
    assert result.user_ids.dtype == user_ids.dtype
    assert result.user_ids.tolist() == expected_ids
    assert result.impressions.tolist() == [2, 2]
    assert result.auc.tolist() == [1.0, 1.0]


def test_lexsort_fallback_matches_key_path(monkeypatch):
    user_ids, labels, scores = _random_data(3, n=5_000, users=150, decimals=2)
    expected = per_user_auc(user_ids, labels, scores)
    monkeypatch.setattr(metrics, "_KEY_LIMIT", 0)  # every input now takes the lexsort path
    _assert_same_per_user(per_user_auc(user_ids, labels, scores), expected)


# ---------------------------------------------------------------------------------------------- invariants


@settings(max_examples=80, deadline=None)
@given(rows_strategy, st.randoms(use_true_random=False))
def test_gauc_invariant_to_row_permutation(rows, random):
    user_ids, labels, scores = _columns(rows)
    permutation = np.array(random.sample(range(len(rows)), len(rows)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        before = gauc(user_ids, labels, scores)
        after = gauc(user_ids[permutation], labels[permutation], scores[permutation])
        auc_before, auc_after = auc(labels, scores), auc(labels[permutation], scores[permutation])
    assert (before.users, before.impressions, before.users_skipped) == (
        after.users,
        after.impressions,
        after.users_skipped,
    )
    assert before.gauc == pytest.approx(after.gauc, abs=1e-12, nan_ok=True)
    assert auc_before == pytest.approx(auc_after, abs=1e-12, nan_ok=True)


def test_auc_invariant_to_increasing_transform_of_scores():
    _, labels, scores = _random_data(4, n=3_000, users=1, decimals=2)
    logits = np.log(scores.astype(np.float64) + 1e-3) * 3 - 5  # strictly increasing: same order, same ties
    assert auc(labels, logits) == pytest.approx(auc(labels, scores), abs=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gauc_treats_negative_zero_as_zero_on_large_arrays(dtype):
    # Large enough for numpy's vectorised sorts, which may order -0.0 before 0.0 by their bits.
    rng = np.random.default_rng(10)
    user_ids = rng.integers(0, 50, 20_000)
    labels = rng.integers(0, 2, 20_000)
    scores = rng.choice(np.array([-1.0, -0.0, 0.0, 1.0], dtype=dtype), 20_000)
    positive_zero = np.where(scores == 0, dtype(0.0), scores)
    assert np.signbit(scores[scores == 0]).any() and not np.signbit(positive_zero[positive_zero == 0]).any()
    assert gauc(user_ids, labels, scores) == gauc(user_ids, labels, positive_zero)
    assert auc(labels, scores) == auc(labels, positive_zero)


def test_gauc_of_one_user_equals_auc():
    _, labels, scores = _random_data(5, n=2_000, users=1, decimals=2)
    result = gauc(np.full(len(labels), 42), labels, scores)
    assert result.users == 1 and result.impressions == 2_000
    assert result.gauc == pytest.approx(auc(labels, scores), abs=1e-15)


def test_gauc_one_class_users_excluded_and_counted():
    user_ids, labels, scores = _random_data(6, n=3_000, users=60, decimals=2)
    base = gauc(user_ids, labels, scores)
    # Add 5 all-negative users (3 impressions each) and 2 all-positive users (4 impressions each).
    extra_users = np.concatenate([np.repeat(np.arange(1000, 1005), 3), np.repeat([2000, 2001], 4)])
    extra_labels = np.concatenate([np.zeros(15, np.int8), np.ones(8, np.int8)])
    extra_scores = np.linspace(0, 1, 23).astype(np.float32)
    grown = gauc(
        np.concatenate([user_ids, extra_users]),
        np.concatenate([labels, extra_labels]),
        np.concatenate([scores, extra_scores]),
    )
    assert grown.gauc == base.gauc
    assert (grown.users, grown.impressions) == (base.users, base.impressions)
    assert grown.users_skipped == base.users_skipped + 7
    assert grown.impressions_skipped == base.impressions_skipped + 23


def test_gauc_without_any_two_class_user_is_nan_and_warns():
    with pytest.warns(UndefinedMetricWarning, match="none of the 2 users"):
        result = gauc([1, 1, 2], [0, 0, 1], [0.1, 0.2, 0.3])
    assert math.isnan(result.gauc)
    assert (result.users, result.impressions, result.users_skipped, result.impressions_skipped) == (0, 0, 2, 3)


def test_auc_with_one_class_is_nan_and_warns():
    with pytest.warns(UndefinedMetricWarning, match="all 3 labels are 1"):
        assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_metrics_do_not_mutate_inputs():
    user_ids, labels, scores = _random_data(7, n=1_000, users=30, decimals=1)
    scores[:5] = -0.0  # a tie with 0.0, handled without rewriting the array
    probs = scores.astype(np.float64)
    originals = [a.copy() for a in (user_ids, labels, scores, probs)]
    for array in (user_ids, labels, scores, probs):
        array.setflags(write=False)  # any in-place write would raise
    auc(labels, scores)
    gauc(user_ids, labels, scores)
    per_user_auc(user_ids, labels, scores)
    log_loss(labels, probs)
    evaluate_predictions(user_ids, labels, probs)
    for before, after in zip(originals, (user_ids, labels, scores, probs), strict=True):
        np.testing.assert_array_equal(before, after)
        assert np.signbit(before).tolist() == np.signbit(after).tolist()


def test_log_loss_matches_sklearn(sklearn_metrics):
    _, labels, scores = _random_data(8, n=5_000, users=1, decimals=3)
    probs = np.clip(scores.astype(np.float64), 1e-3, 1 - 1e-3)  # inside [eps, 1 - eps]: no clipping
    assert log_loss(labels, probs) == pytest.approx(sklearn_metrics.log_loss(labels, probs), rel=1e-12)


def test_evaluate_predictions_agrees_with_the_single_metrics_and_is_json_ready():
    user_ids, labels, scores = _random_data(9, n=4_000, users=80, decimals=2)
    probs = scores.astype(np.float64)
    report = evaluate_predictions(user_ids, labels, probs)
    group = gauc(user_ids, labels, probs)
    assert report == {
        "impressions": 4_000,
        "positives": int(labels.sum()),
        "positive_rate": labels.mean(),
        "auc": auc(labels, probs),
        "gauc": group.gauc,
        "gauc_users": group.users,
        "gauc_impressions": group.impressions,
        "gauc_users_skipped": group.users_skipped,
        "gauc_impressions_skipped": group.impressions_skipped,
        "log_loss": log_loss(labels, probs),
    }
    assert json.loads(json.dumps(report)) == report
    assert all(type(value) in (int, float) for value in report.values())


# ---------------------------------------------------------------------------------------------- errors

GOOD_USERS, GOOD_LABELS, GOOD_SCORES = [1, 1, 2], [0, 1, 1], [0.1, 0.7, 0.4]


@pytest.mark.parametrize(
    ("call", "argument", "match"),
    [
        (lambda: auc([], []), "labels", "at least one row, found 0 rows"),
        (lambda: auc([[0, 1]], [[0.1, 0.2]]), "labels", r"1-D array, found shape \(1, 2\)"),
        (lambda: auc([0, 1, 1], [0.1, 0.2]), "scores", r"same length as 'labels' \(3\), found length 2"),
        (lambda: auc([0, 2, 1], GOOD_SCORES), "labels", r"values 0 or 1, found 2 \(row 1\)"),
        (lambda: auc([0, 1, np.nan], GOOD_SCORES), "labels", r"values 0 or 1, found nan \(row 2\)"),
        (lambda: auc(["a", "b", "a"], GOOD_SCORES), "labels", "numeric or boolean array"),
        (lambda: auc(GOOD_LABELS, [0.1, np.inf, 0.2]), "scores", r"finite values, found inf \(row 1\)"),
        (lambda: auc(GOOD_LABELS, [0.1, 0.2, np.nan]), "scores", r"finite values, found nan \(row 2\)"),
        (lambda: auc(GOOD_LABELS, ["x", "y", "z"]), "scores", "numeric array"),
        (lambda: gauc([1, 2], GOOD_LABELS, GOOD_SCORES), "labels", r"same length as 'user_ids' \(2\)"),
        (lambda: gauc([1.0, 1.0, 2.0], GOOD_LABELS, GOOD_SCORES), "user_ids", "integer or string ids"),
        (
            lambda: gauc(np.array([1, None, "a"], dtype=object), GOOD_LABELS, GOOD_SCORES),
            "user_ids",
            "one orderable type",
        ),
        (lambda: gauc(GOOD_USERS, GOOD_LABELS, [0.1, np.nan, 0.3]), "scores", "finite values"),
        (lambda: log_loss(GOOD_LABELS, [0.1, 1.5, 0.3]), "probs", r"in \[0, 1\].*found 1.5 \(row 1\)"),
        (lambda: log_loss(GOOD_LABELS, [-3.0, 0.5, 0.3]), "probs", r"pass logits to auc/gauc"),
        (lambda: log_loss(GOOD_LABELS, [0.1, 0.5, 0.3], eps=0.0), "eps", "0 < eps < 0.5, found 0.0"),
        (lambda: log_loss(GOOD_LABELS, [0.1, 0.5, 0.3], eps=0.7), "eps", "0 < eps < 0.5"),
        (lambda: evaluate_predictions(GOOD_USERS, GOOD_LABELS, [0.1, 0.5]), "probs", "same length"),
        (lambda: evaluate_predictions(GOOD_USERS, [0, 1, 3], GOOD_SCORES), "labels", "values 0 or 1"),
    ],
)
def test_metrics_errors_name_the_argument(call, argument, match):
    with pytest.raises(MetricInputError, match=match) as info:
        call()
    assert info.value.argument == argument
    assert str(info.value).startswith(f"argument '{argument}'")
    assert isinstance(info.value, Twinv2Error) and isinstance(info.value, ValueError)

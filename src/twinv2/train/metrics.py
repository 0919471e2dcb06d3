"""Evaluation metrics shared by every model and benchmark: AUC, GAUC and log loss.

One implementation, so that numbers from different models are comparable (DESIGN §3):

- :func:`auc`: area under the ROC curve over all impressions. Ties count 1/2 (a positive and a negative with
  the same score form half a correctly ordered pair), which is the midrank / Mann-Whitney definition and
  what ``sklearn.metrics.roc_auc_score`` computes.
- :func:`gauc`: impression-weighted mean of per-user AUCs,
  ``GAUC = sum_u n_u * AUC_u / sum_u n_u``, over the users that have both a positive and a negative
  impression; ``n_u`` is the user's number of impressions. The result also says how many users and
  impressions were counted and how many were skipped (one-class users).
- :func:`log_loss`: mean binary cross-entropy of probabilities clipped to ``[eps, 1 - eps]``.
- :func:`evaluate_predictions`: all of the above in one JSON-ready dict, validating the inputs once.

Undefined values: ``auc`` of data with a single class and ``gauc`` when no user has both classes are
``nan`` (with an :class:`UndefinedMetricWarning`), never an exception, so that an evaluation of a small
slice (one activity group, one day) still reports its other numbers. ``GaucResult.users == 0`` tells the
two cases of ``nan`` apart from a real value.

How it is fast: one global sort. Scores are replaced by their dense rank ``r`` (equal scores share a rank),
each row gets the integer key ``(user * D + r) * 2 + label`` (``D`` = number of distinct scores) and the
keys are sorted once. Runs of equal ``key >> 1`` are the (user, score) tie groups; per group we count
positives and negatives, and per user (segment sums with ``np.add.reduceat``)
``2 * (correctly ordered pairs + ties / 2) = sum_g pos_g * (2 * neg_below_g + neg_g)``, all in exact int64
arithmetic until the final division. No Python loop over users. :func:`reference_gauc` is the slow
per-user scikit-learn loop kept beside it for tests and ``benchmarks/metrics_speed.py``.

Sizes: exact for fewer than 2**31 rows (the pair counts stay below 2**63).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from twinv2.errors import Twinv2Error

__all__ = [
    "GaucResult",
    "MetricInputError",
    "PerUserAuc",
    "UndefinedMetricWarning",
    "auc",
    "evaluate_predictions",
    "gauc",
    "log_loss",
    "per_user_auc",
    "reference_gauc",
    "reference_per_user_auc",
]

# The sort key (user * D + rank) * 2 + label must fit in int64; above this bound of user_span * D the
# metrics fall back to np.lexsort (slower, same result). Only reachable with about 2**31 rows.
_KEY_LIMIT = 2**61


class MetricInputError(Twinv2Error, ValueError):
    """An argument of a metric function is unusable (wrong length, non-binary label, NaN score, ...).

    The message names the argument, what was expected and what was found, e.g.
    ``argument 'labels': expected values 0 or 1, found 2 (row 5)``.
    """

    def __init__(self, argument: str, expected: str, found: str | None = None):
        self.argument, self.expected, self.found = argument, expected, found
        msg = f"argument '{argument}': expected {expected}"
        if found:
            msg += f", found {found}"
        super().__init__(msg)


class UndefinedMetricWarning(UserWarning):
    """A metric is undefined for the given data (a single class) and was returned as ``nan``."""


@dataclass(frozen=True)
class GaucResult:
    """Group AUC and what it was computed over.

    Attributes:
        gauc: ``sum_u n_u * AUC_u / sum_u n_u`` over the counted users; ``nan`` when ``users == 0``.
        users: users counted (those with at least one positive and one negative impression).
        impressions: impressions of the counted users (the denominator ``sum_u n_u``).
        users_skipped: users present in the input with a single class, left out of the mean.
        impressions_skipped: impressions of the skipped users.
    """

    gauc: float
    users: int
    impressions: int
    users_skipped: int
    impressions_skipped: int


@dataclass(frozen=True)
class PerUserAuc:
    """AUC of every user present in the input, sorted by user id.

    Attributes:
        user_ids: ``(U,)`` the distinct user ids, ascending, with the dtype of the input ids.
        impressions: ``(U,)`` int64, impressions per user (``n_u``).
        positives: ``(U,)`` int64, positive impressions per user.
        auc: ``(U,)`` float64, the user's AUC, ``nan`` for a user with a single class.
    """

    user_ids: np.ndarray
    impressions: np.ndarray
    positives: np.ndarray
    auc: np.ndarray


# --------------------------------------------------------------------------------------------------------
# Input validation (public boundary only; the private helpers below trust their inputs).


def _as_1d(argument: str, values: ArrayLike) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise MetricInputError(argument, "a 1-D array", f"shape {array.shape}")
    if array.shape[0] == 0:
        raise MetricInputError(argument, "at least one row", "0 rows")
    return array


def _check_same_length(**arrays: np.ndarray) -> int:
    (first_name, first), *rest = arrays.items()
    for name, array in rest:
        if array.shape[0] != first.shape[0]:
            raise MetricInputError(
                name, f"the same length as '{first_name}' ({first.shape[0]})", f"length {array.shape[0]}"
            )
    return first.shape[0]


def _first_bad_row(ok: np.ndarray) -> int:
    return int(np.flatnonzero(~ok)[0])


def _validate_labels(labels: ArrayLike) -> np.ndarray:
    """Labels as an int8 0/1 array (a new array; the input is never modified)."""
    array = _as_1d("labels", labels)
    if array.dtype.kind not in "biuf":
        raise MetricInputError("labels", "a numeric or boolean array of 0/1", f"dtype {array.dtype}")
    if array.dtype.kind != "b":
        ok = (array == 0) | (array == 1)
        if not ok.all():
            row = _first_bad_row(ok)
            raise MetricInputError("labels", "values 0 or 1", f"{array[row].item()!r} (row {row})")
    return array.astype(np.int8)


def _validate_scores(argument: str, scores: ArrayLike) -> np.ndarray:
    array = _as_1d(argument, scores)
    if array.dtype.kind not in "biuf":
        raise MetricInputError(argument, "a numeric array", f"dtype {array.dtype}")
    if array.dtype.kind == "f":
        ok = np.isfinite(array)
        if not ok.all():
            row = _first_bad_row(ok)
            raise MetricInputError(argument, "finite values", f"{array[row].item()!r} (row {row})")
    return array


def _validate_probs(probs: ArrayLike) -> np.ndarray:
    array = _validate_scores("probs", probs)
    ok = (array >= 0) & (array <= 1)
    if not ok.all():
        row = _first_bad_row(ok)
        raise MetricInputError(
            "probs",
            "probabilities in [0, 1] (pass logits to auc/gauc, not to log_loss)",
            f"{array[row].item()!r} (row {row})",
        )
    return array


def _validate_eps(eps: float) -> float:
    if not (isinstance(eps, (int, float)) and 0 < eps < 0.5):
        raise MetricInputError("eps", "a number with 0 < eps < 0.5", repr(eps))
    return float(eps)


@dataclass(frozen=True)
class _UserCodes:
    """User ids mapped to codes in ``[0, span)``; ``ids_of(codes)`` maps codes back to the input ids."""

    codes: np.ndarray  # (N,) int64
    span: int
    offset: int  # integer ids: id = code + offset
    dtype: np.dtype  # dtype of the input ids
    distinct: np.ndarray | None  # other ids: id = distinct[code]

    def ids_of(self, codes: np.ndarray) -> np.ndarray:
        if self.distinct is not None:
            return self.distinct[codes]
        # Add in a 64-bit type of the ids' signedness (exact: the result is an input id), then narrow.
        wide = np.uint64 if self.dtype.kind == "u" else np.int64
        return (codes.astype(wide) + wide(self.offset)).astype(self.dtype)


def _validate_user_ids(user_ids: ArrayLike) -> _UserCodes:
    array = _as_1d("user_ids", user_ids)
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        # Dense-ish integer ids are used as codes directly (no extra sort); sparse ones (hashes, raw ids
        # up to 2**63) are factorised so that the sort key stays small.
        if high - low < 4 * array.shape[0] + 1024:
            wide = np.uint64 if array.dtype.kind == "u" else np.int64  # uint64 ids may exceed 2**63
            codes = (array.astype(wide) - wide(low)).astype(np.int64)
            return _UserCodes(codes, high - low + 1, low, array.dtype, None)
    elif array.dtype.kind not in "bUSO":
        raise MetricInputError("user_ids", "integer or string ids", f"dtype {array.dtype}")
    try:
        distinct, codes = np.unique(array, return_inverse=True)
    except TypeError as err:  # object arrays with values that cannot be ordered (e.g. None next to str)
        raise MetricInputError("user_ids", "ids of one orderable type", str(err)) from err
    return _UserCodes(codes.astype(np.int64).reshape(-1), len(distinct), 0, array.dtype, distinct)


# --------------------------------------------------------------------------------------------------------
# Kernels (no input validation).


def _dense_ranks(scores: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense ranks of ``scores``: ``(N,)`` int64 in ``[0, D)``, equal scores share a rank; also ``D``.

    No input validation: ``scores`` is 1-D, non-empty and NaN-free.
    """
    n = scores.shape[0]
    order = np.argsort(scores)  # an unstable sort is fine: tied rows get the same rank anyway
    sorted_scores = scores[order]
    new_value = np.empty(n, dtype=bool)
    new_value[0] = True
    # Equality by comparison, not by bits: -0.0 and 0.0 are one score, wherever the sort put them.
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=new_value[1:])
    del sorted_scores
    dense = np.cumsum(new_value, dtype=np.int64)
    dense -= 1
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = dense
    return ranks, int(dense[-1]) + 1


def _tie_groups(codes: np.ndarray, span: int, labels: np.ndarray, scores: np.ndarray):
    """Counts per (user, score) tie group, groups ordered by user then score.

    Returns ``(group_user (G,), group_pos (G,), group_neg (G,))``, all int64.
    No input validation: arrays are 1-D of equal non-zero length, codes in ``[0, span)``, labels 0/1.
    Temporaries are freed as soon as they are used: at 10^7 rows each int64 array is 80 MB.
    """
    n = labels.shape[0]
    ranks, num_ranks = _dense_ranks(scores)
    new_group = np.empty(n + 1, dtype=bool)  # new_group[i]: row i starts a tie group; [n] closes the last
    new_group[0] = new_group[n] = True
    positives_before = np.zeros(n + 1, dtype=np.int64)  # positives among the first i sorted rows
    if span * num_ranks < _KEY_LIMIT:
        # One int64 sort of (user, rank, label). The label bit only orders rows inside a tie group, which
        # the counts below do not depend on; it lets the counts come from the sorted keys alone.
        key = codes * num_ranks
        key += ranks
        del ranks
        key <<= 1
        key += labels
        key.sort()
        np.cumsum(key & 1, out=positives_before[1:])
        key >>= 1  # now user * D + rank
        np.not_equal(key[1:], key[:-1], out=new_group[1:n])
        bounds = np.flatnonzero(new_group)  # (G + 1,) group starts, then n
        group_user = key[bounds[:-1]] // num_ranks
        del key
    else:
        order = np.lexsort((ranks, codes))
        sorted_codes, sorted_ranks = codes[order], ranks[order]
        del ranks
        np.cumsum(labels[order], dtype=np.int64, out=positives_before[1:])
        del order
        new_group[1:n] = (sorted_codes[1:] != sorted_codes[:-1]) | (sorted_ranks[1:] != sorted_ranks[:-1])
        del sorted_ranks
        bounds = np.flatnonzero(new_group)
        group_user = sorted_codes[bounds[:-1]]
        del sorted_codes
    del new_group
    group_pos = positives_before[bounds[1:]]
    group_pos -= positives_before[bounds[:-1]]
    del positives_before
    group_neg = np.diff(bounds)
    group_neg -= group_pos
    return group_user, group_pos, group_neg


def _auc_from_groups(group_user: np.ndarray, group_pos: np.ndarray, group_neg: np.ndarray):
    """Per-user AUC from tie-group counts ordered by user then ascending score.

    Returns ``(users (U,), impressions (U,), positives (U,), auc (U,) float64 with nan for one class)``.
    No input validation.
    """
    new_user = np.empty(group_user.shape[0], dtype=bool)
    new_user[0] = True
    np.not_equal(group_user[1:], group_user[:-1], out=new_user[1:])
    user_first = np.flatnonzero(new_user)
    # Negatives in earlier groups, counted over all users; subtracting the value at the user's first group
    # gives the negatives of the same user with a strictly lower score.
    neg_before = np.cumsum(group_neg)
    neg_before -= group_neg
    # 2 * (pairs ordered correctly + tied pairs / 2) per group; the user offset is removed per user below.
    twice_pairs = 2 * neg_before
    twice_pairs += group_neg
    twice_pairs *= group_pos
    positives = np.add.reduceat(group_pos, user_first)
    negatives = np.add.reduceat(group_neg, user_first)
    twice_pairs_user = np.add.reduceat(twice_pairs, user_first) - 2 * positives * neg_before[user_first]
    both = (positives > 0) & (negatives > 0)
    auc = np.full(user_first.shape[0], np.nan)
    auc[both] = twice_pairs_user[both] / (2.0 * positives[both] * negatives[both])
    return group_user[user_first], positives + negatives, positives, auc


def _per_user(user_codes: _UserCodes, labels: np.ndarray, scores: np.ndarray) -> PerUserAuc:
    groups = _tie_groups(user_codes.codes, user_codes.span, labels, scores)
    codes, impressions, positives, auc = _auc_from_groups(*groups)
    return PerUserAuc(user_codes.ids_of(codes), impressions, positives, auc)


def _gauc_from_per_user(per_user: PerUserAuc) -> GaucResult:
    counted = ~np.isnan(per_user.auc)
    users = int(counted.sum())
    impressions = int(per_user.impressions[counted].sum())
    skipped = int(per_user.impressions.shape[0]) - users
    impressions_skipped = int(per_user.impressions[~counted].sum())
    if users == 0:
        warnings.warn(
            f"GAUC is undefined: none of the {skipped} users has both a positive and a negative impression; "
            "returning nan",
            UndefinedMetricWarning,
            stacklevel=3,
        )
        return GaucResult(math.nan, 0, 0, skipped, impressions_skipped)
    # fsum: the exactly rounded sum, so the value does not depend on the order of the users (their ids).
    weighted = per_user.impressions[counted] * per_user.auc[counted]
    value = math.fsum(weighted.tolist()) / impressions
    return GaucResult(value, users, impressions, skipped, impressions_skipped)


def _global_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    ranks, num_ranks = _dense_ranks(scores)
    # Global AUC needs no second sort: count positives and rows per distinct score.
    group_pos = np.bincount(ranks[labels == 1], minlength=num_ranks).astype(np.int64)
    group_neg = np.bincount(ranks, minlength=num_ranks).astype(np.int64) - group_pos
    _, _, _, value = _auc_from_groups(np.zeros(num_ranks, dtype=np.int64), group_pos, group_neg)
    if math.isnan(value[0]):
        warnings.warn(
            f"AUC is undefined: all {labels.shape[0]} labels are {int(labels[0])}; returning nan",
            UndefinedMetricWarning,
            stacklevel=3,
        )
    return float(value[0])


def _log_loss(labels: np.ndarray, probs: np.ndarray, eps: float) -> float:
    clipped = np.clip(probs.astype(np.float64), eps, 1.0 - eps)
    # Pick the log of the probability of the observed label (no 0 * log 0 terms).
    per_row = np.where(labels == 1, np.log(clipped), np.log1p(-clipped))
    return float(-per_row.mean())


# --------------------------------------------------------------------------------------------------------
# Public API.


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve; tied scores count 1/2 (midrank definition).

    Args:
        labels: ``(N,)`` 0/1 (bool, int or float).
        scores: ``(N,)`` finite numbers; higher means more likely positive (logits or probabilities).

    Returns:
        AUC in [0, 1]; ``nan`` with an :class:`UndefinedMetricWarning` when all labels are equal.

    Raises:
        MetricInputError: empty or non-1-D input, unequal lengths, a label not 0/1, a non-finite score.

    Example:
        >>> auc([0, 1, 0, 1], [0.1, 0.4, 0.4, 0.8])
        0.875
    """
    label_array = _validate_labels(labels)
    score_array = _validate_scores("scores", scores)
    _check_same_length(labels=label_array, scores=score_array)
    return _global_auc(label_array, score_array)


def per_user_auc(user_ids: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> PerUserAuc:
    """AUC of every user, for reports by user group (activity tertiles) and for checks.

    Args:
        user_ids: ``(N,)`` integer or string user ids (any order, any values).
        labels: ``(N,)`` 0/1.
        scores: ``(N,)`` finite numbers.

    Returns:
        :class:`PerUserAuc` with one entry per distinct user, sorted by user id; one-class users have
        ``auc = nan``.

    Raises:
        MetricInputError: as :func:`gauc`.

    Example:
        >>> r = per_user_auc([7, 7, 3, 3, 3], [1, 0, 0, 1, 1], [0.9, 0.2, 0.5, 0.5, 0.7])
        >>> r.user_ids.tolist(), r.auc.tolist()
        ([3, 7], [0.75, 1.0])
    """
    label_array = _validate_labels(labels)
    score_array = _validate_scores("scores", scores)
    user_codes = _validate_user_ids(user_ids)
    _check_same_length(user_ids=user_codes.codes, labels=label_array, scores=score_array)
    return _per_user(user_codes, label_array, score_array)


def gauc(user_ids: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> GaucResult:
    """Group AUC: impression-weighted mean of per-user AUCs over users with both classes (DESIGN §3).

    ``GAUC = sum_u n_u * AUC_u / sum_u n_u`` where ``n_u`` is user u's number of impressions and the sums
    run over users with at least one positive and one negative impression. One-class users are left out
    and counted in ``users_skipped`` / ``impressions_skipped``. When no user has both classes the result
    is ``gauc = nan, users = 0`` with an :class:`UndefinedMetricWarning`.

    Args:
        user_ids: ``(N,)`` integer or string user ids (any order, any values).
        labels: ``(N,)`` 0/1.
        scores: ``(N,)`` finite numbers.

    Raises:
        MetricInputError: empty or non-1-D input, unequal lengths, a label not 0/1, a non-finite score,
            user ids that are neither integers nor strings.

    Example:
        >>> gauc([7, 7, 3, 3, 3, 5], [1, 0, 0, 1, 1, 0], [0.9, 0.2, 0.5, 0.5, 0.7, 0.3])
        GaucResult(gauc=0.85, users=2, impressions=5, users_skipped=1, impressions_skipped=1)
    """
    return _gauc_from_per_user(per_user_auc(user_ids, labels, scores))


def log_loss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, with probabilities clipped to ``[eps, 1 - eps]``.

    ``eps = 1e-7`` bounds the loss of one row at about 16.1 (``-ln 1e-7``), so that one saturated wrong
    prediction cannot dominate the mean; it is also about the float32 resolution near 1.

    Args:
        labels: ``(N,)`` 0/1.
        probs: ``(N,)`` probabilities in [0, 1] (not logits: those are rejected).
        eps: clipping bound, ``0 < eps < 0.5``.

    Raises:
        MetricInputError: as :func:`auc`, plus a probability outside [0, 1] or a bad ``eps``.

    Example:
        >>> round(log_loss([1, 0], [0.8, 0.4]), 6)  # (-ln 0.8 - ln 0.6) / 2
        0.366985
    """
    eps = _validate_eps(eps)
    label_array = _validate_labels(labels)
    prob_array = _validate_probs(probs)
    _check_same_length(labels=label_array, probs=prob_array)
    return _log_loss(label_array, prob_array, eps)


def evaluate_predictions(
    user_ids: ArrayLike, labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7
) -> dict[str, float | int]:
    """AUC, GAUC (with its counts) and log loss of one set of predictions, validating the inputs once.

    AUC and GAUC are computed on ``probs``; ranking probabilities equals ranking logits except where a
    float32 sigmoid saturates, which creates ties (counted 1/2).

    Args:
        user_ids: ``(N,)`` integer or string user ids.
        labels: ``(N,)`` 0/1.
        probs: ``(N,)`` predicted click probabilities in [0, 1].
        eps: log-loss clipping bound.

    Returns:
        A JSON-ready dict with keys ``impressions``, ``positives``, ``positive_rate``, ``auc``, ``gauc``,
        ``gauc_users``, ``gauc_impressions``, ``gauc_users_skipped``, ``gauc_impressions_skipped``,
        ``log_loss`` (``auc``/``gauc`` may be ``nan``, see :func:`auc` and :func:`gauc`).

    Example:
        >>> m = evaluate_predictions([1, 1, 2, 2], [1, 0, 0, 1], [0.9, 0.2, 0.6, 0.3])
        >>> m["auc"], m["gauc"], m["gauc_users"]
        (0.75, 0.5, 2)
    """
    eps = _validate_eps(eps)
    label_array = _validate_labels(labels)
    prob_array = _validate_probs(probs)
    user_codes = _validate_user_ids(user_ids)
    n = _check_same_length(user_ids=user_codes.codes, labels=label_array, probs=prob_array)
    group = _gauc_from_per_user(_per_user(user_codes, label_array, prob_array))
    positives = int(label_array.sum(dtype=np.int64))
    return {
        "impressions": n,
        "positives": positives,
        "positive_rate": positives / n,
        "auc": _global_auc(label_array, prob_array),
        "gauc": group.gauc,
        "gauc_users": group.users,
        "gauc_impressions": group.impressions,
        "gauc_users_skipped": group.users_skipped,
        "gauc_impressions_skipped": group.impressions_skipped,
        "log_loss": _log_loss(label_array, prob_array, eps),
    }


# --------------------------------------------------------------------------------------------------------
# Slow reference (scikit-learn, a dev dependency): one roc_auc_score call per user.


def _roc_auc_score():
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError as err:  # pragma: no cover - scikit-learn is in the dev extra
        raise ImportError(
            "the reference metrics need scikit-learn, a dev dependency: pip install 'twinv2[dev]'"
        ) from err
    return roc_auc_score


def reference_per_user_auc(user_ids: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> PerUserAuc:
    """Slow reference for :func:`per_user_auc`: a Python loop calling ``sklearn.metrics.roc_auc_score``.

    Kept for tests and the speed benchmark; use :func:`per_user_auc` otherwise. Same inputs and output.
    """
    roc_auc_score = _roc_auc_score()
    label_array = _validate_labels(labels)
    score_array = _validate_scores("scores", scores)
    id_array = _as_1d("user_ids", user_ids)
    _check_same_length(user_ids=id_array, labels=label_array, scores=score_array)
    order = np.argsort(id_array, kind="stable")
    sorted_ids = id_array[order]
    starts = np.concatenate(([0], np.flatnonzero(sorted_ids[1:] != sorted_ids[:-1]) + 1))
    ends = np.concatenate((starts[1:], [len(order)]))
    impressions, positives, aucs = [], [], []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        rows = order[start:end]
        user_labels = label_array[rows]
        num_pos = int(user_labels.sum())
        impressions.append(end - start)
        positives.append(num_pos)
        both_classes = 0 < num_pos < end - start
        aucs.append(float(roc_auc_score(user_labels, score_array[rows])) if both_classes else math.nan)
    return PerUserAuc(
        sorted_ids[starts],
        np.asarray(impressions, dtype=np.int64),
        np.asarray(positives, dtype=np.int64),
        np.asarray(aucs, dtype=np.float64),
    )


def reference_gauc(user_ids: ArrayLike, labels: ArrayLike, scores: ArrayLike) -> GaucResult:
    """Slow reference for :func:`gauc` (per-user ``roc_auc_score`` loop, plain-Python weighted mean)."""
    per_user = reference_per_user_auc(user_ids, labels, scores)
    weighted, counted_rows, counted_users, skipped_rows = [], 0, 0, 0
    for n_u, auc_u in zip(per_user.impressions.tolist(), per_user.auc.tolist(), strict=True):
        if math.isnan(auc_u):
            skipped_rows += n_u
        else:
            weighted.append(n_u * auc_u)
            counted_rows += n_u
            counted_users += 1
    skipped_users = len(per_user.auc) - counted_users
    value = math.fsum(weighted) / counted_rows if counted_users else math.nan
    return GaucResult(value, counted_users, counted_rows, skipped_users, skipped_rows)

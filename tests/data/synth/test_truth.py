"""Ground truth: the true click probabilities and their loader."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from tests.data.synth.conftest import events_of
from twinv2.data.synth import GROUND_TRUTH_FILES, load_click_prob
from twinv2.errors import DataValidationError


def test_click_prob_is_the_labels_true_probability(tiny_dir):
    prob = load_click_prob(tiny_dir)
    label = events_of(tiny_dir)["label"]
    assert prob.dtype == np.float32 and prob.shape == label.shape
    assert prob.min() > 0.0 and prob.max() < 1.0
    # Calibrated overall (within 4 binomial standard errors) and in each decile of the probability.
    se = np.sqrt((prob * (1 - prob)).sum()) / len(prob)
    assert abs(label.mean() - prob.mean()) < 4 * se
    bins = np.quantile(prob, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(bins, prob, side="right") - 1, 0, 9)
    rates = np.array([label[which == b].mean() for b in range(10)])
    means = np.array([prob[which == b].mean() for b in range(10)])
    assert np.all(np.abs(rates - means) < 0.05), (rates, means)
    assert rates[-1] > rates[0] + 0.3  # labels are far more frequent where the probability is high


def test_load_click_prob_names_the_file_when_missing_or_mismatched(tiny_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dir, copy)
    path = copy / GROUND_TRUTH_FILES["click_prob"]
    np.save(path, load_click_prob(tiny_dir)[:-1])
    with pytest.raises(DataValidationError, match=r"click_prob\.npy.*one probability per event"):
        load_click_prob(copy)
    np.save(path, np.zeros((2, 3), np.float32))
    with pytest.raises(DataValidationError, match=r"click_prob\.npy.*1-D float"):
        load_click_prob(copy)
    np.save(path, np.full(len(load_click_prob(tiny_dir)), 1.5, np.float32))
    with pytest.raises(DataValidationError, match=r"in \[0, 1\]"):
        load_click_prob(copy)
    path.write_bytes(b"not an npy file")
    with pytest.raises(DataValidationError, match=r"click_prob\.npy.*readable"):
        load_click_prob(copy)
    path.unlink()
    with pytest.raises(DataValidationError, match=r"click_prob\.npy.*no such file"):
        load_click_prob(copy)

"""Metrics: TRL's reward accuracy convention, Wilson intervals, per-language tables, calibration."""

import math

import numpy as np
import pytest
import torch

from capo_tutorial.metrics import (
    calibration_table,
    expected_calibration_error,
    per_language_summary,
    reward_accuracy,
    reward_margin,
    wilson_interval,
)


def test_reward_accuracy_is_strict():
    chosen = torch.tensor([1.0, 0.5, 0.0, -1.0])
    rejected = torch.tensor([0.0, 0.5, 1.0, -2.0])
    assert reward_accuracy(chosen, rejected) == 0.5  # the tie at 0.5 counts as wrong
    assert reward_margin(chosen, rejected) == pytest.approx((1 + 0 - 1 + 1) / 4)
    assert math.isnan(reward_accuracy([], []))


def test_wilson_interval_known_values():
    # Wilson (1927) 95% interval for 8/10: (0.4902, 0.9433), as in standard tables.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 5)[0] == 0.0
    assert wilson_interval(5, 5)[1] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_per_language_summary():
    languages = ["de", "de", "ja", "ja", "ja"]
    chosen = np.array([1.0, 2.0, 0.0, 3.0, 1.0])
    rejected = np.array([0.0, 3.0, -1.0, 1.0, 2.0])
    table = per_language_summary(languages, chosen, rejected)
    assert list(table.index) == ["de", "ja", "all"]
    assert table.loc["de", "n"] == 2
    assert table.loc["de", "accuracy"] == 0.5
    assert table.loc["ja", "accuracy"] == pytest.approx(2 / 3)
    assert table.loc["ja", "margin"] == pytest.approx((1 + 2 - 1) / 3)
    assert table.loc["all", "n"] == 5
    assert table.loc["all", "chosen_reward"] == pytest.approx(1.4)
    assert (table.accuracy_low <= table.accuracy).all() and (table.accuracy <= table.accuracy_high).all()


def test_calibration_of_a_perfectly_calibrated_model_is_near_zero():
    generator = np.random.default_rng(0)
    margins = generator.normal(0, 2, size=20000)
    labels = generator.random(20000) < 1 / (1 + np.exp(-margins))  # labels drawn from sigmoid(margin)
    assert expected_calibration_error(margins, labels) < 0.02


def test_calibration_of_an_overconfident_model_is_large():
    margins = np.full(1000, 6.0)  # says 99.8%
    labels = np.r_[np.ones(700), np.zeros(300)]  # right 70% of the time
    ece = expected_calibration_error(margins, labels)
    assert ece == pytest.approx(abs(0.7 - 1 / (1 + math.exp(-6))), abs=1e-6)
    table = calibration_table(margins, labels)
    assert table.n.sum() == 2000  # each pair read in both orders
    assert table.accuracy.iloc[-1] == pytest.approx(0.7)


def test_constant_half_is_calibrated_on_a_clean_set():
    assert expected_calibration_error(np.zeros(50)) == pytest.approx(0.0)


def test_calibration_label_shape_is_checked():
    with pytest.raises(ValueError, match="labels has shape"):
        calibration_table(np.zeros(3), np.ones(4))

"""Evaluation metrics of preference models: reward accuracy, margins, per-language tables, calibration.

Conventions (as TRL logs them): with implicit rewards r_w, r_l of shape (B,),
reward accuracy is ``mean 1[r_w > r_l]`` (strict: a tie counts as wrong) and the reward margin is
``mean (r_w - r_l)``. A model's probability that the chosen response wins is ``sigmoid(r_w - r_l)``
(Bradley-Terry), which is what the calibration functions assess.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = [
    "accuracy_interval",
    "calibration_table",
    "expected_calibration_error",
    "pair_cells",
    "pair_summary",
    "per_language_summary",
    "reward_accuracy",
    "reward_margin",
    "wilson_interval",
]

ArrayLike = Tensor | np.ndarray | Sequence[float]


def _as_numpy(values: ArrayLike) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def reward_accuracy(chosen_rewards: ArrayLike, rejected_rewards: ArrayLike) -> float:
    """Fraction of pairs with r_w > r_l (strict), from (B,) rewards; NaN for an empty batch."""
    chosen, rejected = _as_numpy(chosen_rewards), _as_numpy(rejected_rewards)
    return float(np.mean(chosen > rejected)) if chosen.size else math.nan


def reward_margin(chosen_rewards: ArrayLike, rejected_rewards: ArrayLike) -> float:
    """Mean of r_w - r_l over (B,) rewards; NaN for an empty batch."""
    chosen, rejected = _as_numpy(chosen_rewards), _as_numpy(rejected_rewards)
    return float(np.mean(chosen - rejected)) if chosen.size else math.nan


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (Wilson 1927) for a binomial proportion; (nan, nan) when trials == 0."""
    if trials == 0:
        return math.nan, math.nan
    z = _normal_quantile(0.5 + confidence / 2)
    p = successes / trials
    denominator = 1 + z**2 / trials
    centre = (p + z**2 / (2 * trials)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / trials + z**2 / (4 * trials**2)) / denominator
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def accuracy_interval(correct: ArrayLike, confidence: float = 0.95) -> tuple[float, float, float]:
    """(accuracy, low, high): the share of True in ``correct`` (B,), and its Wilson interval (NaN: empty)."""
    values = _as_numpy(correct).astype(bool)
    if not values.size:
        return math.nan, math.nan, math.nan
    wins = int(values.sum())
    low, high = wilson_interval(wins, values.size, confidence)
    return wins / values.size, low, high


def _normal_quantile(probability: float) -> float:
    """Inverse standard normal CDF, via the error function's inverse in torch (no scipy needed)."""
    return math.sqrt(2) * torch.erfinv(torch.tensor(2 * probability - 1, dtype=torch.float64)).item()


def per_language_summary(
    languages: Sequence[str],
    chosen_rewards: ArrayLike,
    rejected_rewards: ArrayLike,
    *,
    confidence: float = 0.95,
    overall: bool = True,
) -> pd.DataFrame:
    """One row per language: n, reward accuracy with a Wilson interval, margins and mean rewards.

    Args:
        languages: (B,) a language code per pair.
        chosen_rewards, rejected_rewards: (B,) implicit rewards r_w, r_l.
        confidence: the interval's coverage.
        overall: append a row "all" over every pair.

    Returns:
        DataFrame indexed by language with columns n, accuracy, accuracy_low, accuracy_high,
        margin, chosen_reward, rejected_reward.
    """
    frame = pd.DataFrame(
        {
            "language": list(languages),
            "chosen_reward": _as_numpy(chosen_rewards),
            "rejected_reward": _as_numpy(rejected_rewards),
        }
    )
    if len(frame) != len(_as_numpy(chosen_rewards)):
        raise ValueError("languages, chosen_rewards and rejected_rewards must have one entry per pair")
    groups = [(language, rows) for language, rows in frame.groupby("language", sort=True)]
    if overall:
        groups.append(("all", frame))
    return pd.DataFrame([_summary_row(name, rows, confidence) for name, rows in groups]).set_index("language")


def _summary_row(name: str, rows: pd.DataFrame, confidence: float) -> dict:
    accuracy, low, high = accuracy_interval(rows.chosen_reward > rows.rejected_reward, confidence)
    return {
        "language": name,
        "n": len(rows),
        "accuracy": accuracy,
        "accuracy_low": low,
        "accuracy_high": high,
        "margin": float((rows.chosen_reward - rows.rejected_reward).mean()),
        "chosen_reward": float(rows.chosen_reward.mean()),
        "rejected_reward": float(rows.rejected_reward.mean()),
    }


def pair_cells(predictions: pd.DataFrame, by: Sequence[str]) -> Iterator[tuple[dict[str, Any], pd.DataFrame]]:
    """The cells of scored pairs for every combination of the ``by`` columns' values, each column's
    values sorted after "all" (every value pooled): yields ({column: value}, rows); empty cells skipped."""
    levels = [["all", *sorted(predictions[column].unique())] for column in by]
    for values in itertools.product(*levels):
        cell = predictions
        for column, value in zip(by, values):
            if value != "all":
                cell = cell[cell[column] == value]
        if len(cell):
            yield dict(zip(by, values)), cell


def pair_summary(cell: pd.DataFrame) -> dict[str, float]:
    """n, reward accuracy (share of ``correct``: r_w > r_l strictly), mean ``margin`` and its ECE, of
    scored pairs (a frame of ``capo_tutorial.evaluation.score_pairs``)."""
    return {
        "n": len(cell),
        "accuracy": float(cell.correct.mean()),
        "margin": float(cell.margin.mean()),
        "ece": expected_calibration_error(cell.margin),
    }


def calibration_table(margins: ArrayLike, labels: ArrayLike | None = None, n_bins: int = 10) -> pd.DataFrame:
    """Reliability table of p = sigmoid(margin) against whether the first response truly wins.

    Preference pairs come ordered (chosen first), so on a clean set every label is 1 and a model
    could look calibrated by always answering 1. Each pair therefore enters twice, as (p, y) and
    as (1 - p, 1 - y), the same pair read in both orders: the table is symmetric and a constant
    0.5 model has zero calibration error but no sharpness.

    Args:
        margins: (B,) reward margins r_w - r_l (nats).
        labels: (B,) 1 where the chosen response truly is better, 0 where the label is wrong
            (None: all 1, as on a clean test split).
        n_bins: equal-width probability bins on [0, 1].

    Returns:
        DataFrame with one row per non-empty bin: bin_low, bin_high, n, mean_confidence, accuracy.
    """
    margin = _as_numpy(margins)
    label = np.ones_like(margin) if labels is None else _as_numpy(labels)
    if label.shape != margin.shape:
        raise ValueError(f"labels has shape {label.shape} but margins has shape {margin.shape}")
    probability = 1 / (1 + np.exp(-np.clip(margin, -50, 50)))
    probability = np.concatenate([probability, 1 - probability])
    outcome = np.concatenate([label, 1 - label])
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.digitize(probability, edges[1:-1]), 0, n_bins - 1)
    rows = []
    for index in range(n_bins):
        in_bin = bins == index
        if in_bin.any():
            rows.append(
                {
                    "bin_low": edges[index],
                    "bin_high": edges[index + 1],
                    "n": int(in_bin.sum()),
                    "mean_confidence": float(probability[in_bin].mean()),
                    "accuracy": float(outcome[in_bin].mean()),
                }
            )
    return pd.DataFrame(rows)


def expected_calibration_error(
    margins: ArrayLike, labels: ArrayLike | None = None, n_bins: int = 10
) -> float:
    """ECE (Naeini et al. 2015): sum over bins of (n_bin / n) * abs(accuracy - mean confidence).

    Uses :func:`calibration_table`'s symmetric reading of each pair; NaN for no pairs.
    """
    table = calibration_table(margins, labels, n_bins)
    if table.empty:
        return math.nan
    weights = table.n / table.n.sum()
    return float((weights * (table.accuracy - table.mean_confidence).abs()).sum())

"""The book's figures: seaborn/matplotlib functions that return a Figure, in one house style.

Every function computes what it draws through the package (``losses.preference_loss``,
``losses.capo_weights``, ``metrics``) or takes a table that the package produced, labels its axes
with units, and returns the :class:`matplotlib.figure.Figure` without showing it (a notebook shows
the returned figure; a script saves it with ``fig.savefig``). Single-panel functions accept ``ax=``
to draw into an existing axes.

Units: log-probabilities, implicit rewards, margins and losses are in nats; per-token likelihood
margins in nats per token; weights, gradients with respect to the margin, accuracies and
probabilities are dimensionless.

Colours are stable across the book: DPO and each baseline keep one colour everywhere, and every
CAPO variant is drawn in a warm shade (see :func:`method_palette`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from capo_tutorial.analysis import interval_half_width, require_columns, summarise_seeds
from capo_tutorial.losses import ConfidenceSignals, capo_weights, preference_loss
from capo_tutorial.metrics import accuracy_interval

__all__ = [
    "DEFAULT_LOSSES",
    "METRIC_LABELS",
    "house_style",
    "loss_curves",
    "method_palette",
    "plot_accuracy_vs_noise",
    "plot_audit",
    "plot_beta_effect",
    "plot_loss_and_gradient",
    "plot_per_language",
    "plot_reliability",
    "plot_tilted_policy",
    "plot_training_curves",
    "plot_weight_vs_margin",
    "set_house_style",
]

# --------------------------------------------------------------------------------------------------
# House style and colours
# --------------------------------------------------------------------------------------------------

_RC: dict[str, Any] = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": "medium",
    "legend.frameon": False,
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
}

# One colour per baseline, everywhere in the book (seaborn's colour-blind palette).
_BASELINE_ORDER = ("dpo", "cdpo", "rdpo", "ipo", "hinge", "simpo", "sft", "reference")
_CAPO_PALETTE = "rocket"  # dark purple to red: apart from the baselines' colours


def _capo_colours(count: int) -> list[tuple[float, float, float]]:
    """``count`` warm shades for CAPO variants, from the middle of the rocket palette (no black, no white)."""
    return sns.color_palette(_CAPO_PALETTE, count + 2)[1:-1] if count else []


def set_house_style() -> None:
    """Apply the book's style globally (seaborn whitegrid, notebook context, no top/right spines)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", rc=_RC)


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """Context manager: the book's style for the figures created inside it, without global effects.

    Only the style's own settings are saved and restored (``plt.rc_context`` would also restore the
    backend setting, which breaks Jupyter's inline figures after the first one).
    """
    saved = {key: mpl.rcParams[key] for key in _RC}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook"):
        mpl.rcParams.update(_RC)
        try:
            yield
        finally:
            mpl.rcParams.update(saved)


def _family(label: str) -> str:
    """The loss family a label belongs to: its first word ('capo (sigmoid, γ=1)' -> 'capo')."""
    return label.split()[0].split("(")[0].lower() if label.strip() else label


def method_palette(labels: Sequence[str]) -> dict[str, tuple[float, float, float]]:
    """A colour per label: fixed colours for the baselines, warm shades for the CAPO variants.

    The family is the label's first word: "dpo" is always the same blue, "rdpo" the same green,
    and the labels that start with "capo" share shades of the sequential "rocket" palette in the given order.
    Unknown families take the remaining colour-blind colours in order.
    """
    base = sns.color_palette("colorblind", 10)
    fixed = {name: base[index] for index, name in enumerate(_BASELINE_ORDER)}
    unique = list(dict.fromkeys(labels))
    capo = [label for label in unique if _family(label) == "capo"]
    capo_colours = _capo_colours(len(capo))
    spare = iter(base[len(_BASELINE_ORDER) :] + sns.color_palette("dark", 10))
    palette: dict[str, tuple[float, float, float]] = {}
    for label in unique:
        family = _family(label)
        if family == "capo":
            palette[label] = capo_colours[capo.index(label)]
        elif family in fixed and fixed[family] not in palette.values():
            palette[label] = fixed[family]
        else:
            palette[label] = next(spare)
    return palette


def _finish(fig: Figure) -> Figure:
    """Tighten the layout of a figure that this module built."""
    fig.tight_layout()
    return fig


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _legend_beside(ax: Axes, title: str | None = None) -> None:
    """The legend to the right of the axes, small; its title (if any) smaller still."""
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small", title=title)
    if title is not None:
        ax.get_legend().get_title().set_fontsize("x-small")


def _guide_line(ax: Axes, y: float | None = None, x: float | None = None) -> None:
    """A thin grey reference line that stays out of legends and line counts (label starts with '_')."""
    style = dict(color="0.55", linewidth=0.8, linestyle=":", zorder=0, label="_guide")
    if y is not None:
        ax.axhline(y, **style)
    if x is not None:
        ax.axvline(x, **style)


# --------------------------------------------------------------------------------------------------
# Loss and gradient against the margin
# --------------------------------------------------------------------------------------------------

LossSpec = tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], str]

DEFAULT_LOSSES: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("dpo", {}, "dpo"),
    ("cdpo", {"label_smoothing": 0.1}, "cdpo (ε=0.1)"),
    ("rdpo", {"label_smoothing": 0.1}, "rdpo (ε=0.1)"),
    ("ipo", {}, "ipo"),
    ("hinge", {}, "hinge"),
    ("simpo", {"target_margin": 0.5}, "simpo (margin 0.5)"),
    ("capo", {"confidence": "sigmoid", "gamma": 0.5, "tau": 1.0, "normalize": False}, "capo (γ=0.5, τ=1)"),
    ("capo", {"confidence": "sigmoid", "gamma": 1.0, "tau": 1.0, "normalize": False}, "capo (γ=1, τ=1)"),
    ("capo", {"confidence": "sigmoid", "gamma": 2.0, "tau": 1.0, "normalize": False}, "capo (γ=2, τ=1)"),
)
"""Every pairwise loss in the package, as (name, params, label): the default of the loss figures.

CAPO's weights are left unnormalised here: a curve is a grid of independent pairs, and the
batch normalisation (mean weight 1) would only rescale the whole curve.
"""


def _label(name: str, params: Mapping[str, Any]) -> str:
    shown = {key: value for key, value in params.items() if key != "normalize"}
    if not shown:
        return name
    return f"{name} (" + ", ".join(f"{key}={value}" for key, value in shown.items()) + ")"


def _specs(losses: Sequence[LossSpec]) -> list[tuple[str, dict[str, Any], str]]:
    specs = []
    for spec in losses:
        if len(spec) == 2:
            name, params = spec  # type: ignore[misc]
            specs.append((name, dict(params), _label(name, params)))
        elif len(spec) == 3:
            name, params, label = spec  # type: ignore[misc]
            specs.append((name, dict(params), label))
        else:
            raise ValueError(f"a loss is given as (name, params) or (name, params, label); got {spec!r}")
    return specs


def loss_curves(
    losses: Sequence[LossSpec] = DEFAULT_LOSSES,
    margins: torch.Tensor | Sequence[float] | None = None,
    *,
    beta: float = 1.0,
) -> pd.DataFrame:
    """Per-pair loss, gradient dl/dm and weight on a grid of margins, computed by the package.

    Each margin m becomes one pair whose policy log-probs are (m / beta, 0), whose reference
    log-probs are (0, 0) and whose completions are one token long (so the length-normalised
    losses, IPO and SimPO, see the same m); ``preference_loss`` computes the loss and autograd
    gives dl/dm.

    Args:
        losses: (name, params) or (name, params, label) for each curve; names are keys of
            ``capo_tutorial.losses.LOSSES``.
        margins: (G,) grid of margins m in nats (default: 241 points on [-6, 6]).
        beta: the inverse temperature passed to every loss. DPO-family losses depend on m only;
            IPO is (m - 1/2)^2 / beta^2 in these units; SimPO's reward is m whatever beta is.

    Returns:
        Long DataFrame with columns label, name, margin (nats), loss (nats), gradient (dl/dm) and
        weight (the loss's per-pair weight, 1 for unweighted losses).
    """
    grid = torch.linspace(-6, 6, 241) if margins is None else torch.as_tensor(margins, dtype=torch.float32)
    frames = []
    for name, params, label in _specs(losses):
        margin = grid.clone().requires_grad_(True)
        zeros, ones = torch.zeros_like(grid), torch.ones_like(grid)
        output = preference_loss(
            name,
            margin / beta,
            zeros,
            zeros,
            zeros,
            beta=beta,
            chosen_lengths=ones,
            rejected_lengths=ones,
            **params,
        )
        (gradient,) = torch.autograd.grad(output.losses.sum(), margin)
        frames.append(
            pd.DataFrame(
                {
                    "label": label,
                    "name": name,
                    "margin": grid.numpy(),
                    "loss": output.losses.detach().numpy(),
                    "gradient": gradient.numpy(),
                    "weight": output.weights.numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def plot_loss_and_gradient(
    losses: Sequence[LossSpec] = DEFAULT_LOSSES,
    margins: torch.Tensor | Sequence[float] | None = None,
    *,
    beta: float = 1.0,
    loss_ylim: tuple[float, float] | None = (-1.5, 6.5),
    gradient_ylim: tuple[float, float] | None = (-1.6, 1.0),
) -> Figure:
    """Two panels: each loss and its gradient dl/dm against the margin m (see :func:`loss_curves`).

    Args:
        losses: (name, params) or (name, params, label) per curve (default: every pairwise loss).
        margins: (G,) grid of margins in nats.
        beta: passed to every loss (see :func:`loss_curves`).
        loss_ylim, gradient_ylim: y-limits (None: automatic); IPO's quadratic leaves the default
            panels for large absolute m, on purpose, so that the other curves stay readable.

    Returns:
        The figure; axes[0] holds one line per loss (loss in nats), axes[1] one line per loss
        (dl/dm), in the order given.
    """
    frame = loss_curves(losses, margins, beta=beta)
    labels = list(dict.fromkeys(frame.label))
    palette = method_palette(labels)
    with house_style():
        fig, (loss_ax, grad_ax) = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
        for ax in (loss_ax, grad_ax):
            _guide_line(ax, y=0.0, x=0.0)
        for label in labels:
            rows = frame[frame.label == label]
            style = dict(color=palette[label], linewidth=2.2 if _family(label) == "capo" else 1.6)
            if _family(label) != "capo" and label.split()[0] not in ("dpo",):
                style["linestyle"] = "--"
            loss_ax.plot(rows.margin, rows.loss, label=label, **style)
            grad_ax.plot(rows.margin, rows.gradient, label=label, **style)
        loss_ax.set(xlabel="margin m = r_w − r_l (nats)", ylabel="per-pair loss ℓ (nats)", title="Loss")
        grad_ax.set(
            xlabel="margin m = r_w − r_l (nats)",
            ylabel="gradient dℓ/dm (dimensionless)",
            title="Gradient with respect to the margin",
        )
        if loss_ylim is not None:
            loss_ax.set_ylim(*loss_ylim)
        if gradient_ylim is not None:
            grad_ax.set_ylim(*gradient_ylim)
        _legend_beside(grad_ax)
        return _finish(fig)


def plot_beta_effect(
    betas: Sequence[float] = (0.05, 0.1, 0.5, 1.0),
    log_ratio_margins: torch.Tensor | Sequence[float] | None = None,
) -> Figure:
    """DPO's loss and per-pair push against the log-ratio margin Δρ = ρ_w − ρ_l, for several beta.

    The push is the absolute value of ∂ℓ/∂ log π(y_w | x), beta * sigmoid(−beta Δρ): how strongly one
    pair moves the chosen response's log-probability, obtained by autograd through
    ``preference_loss("dpo", ...)``.

    Args:
        betas: the values of beta, one line each.
        log_ratio_margins: (G,) grid of Δρ in nats (default: 241 points on [-30, 30]).

    Returns:
        The figure; axes[0]: loss (nats) against Δρ, axes[1]: the push (log scale), one line per beta.
    """
    grid = (
        torch.linspace(-30, 30, 241)
        if log_ratio_margins is None
        else torch.as_tensor(log_ratio_margins, dtype=torch.float32)
    )
    palette = sns.color_palette("crest", len(betas))
    with house_style():
        fig, (loss_ax, push_ax) = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
        _guide_line(loss_ax, x=0.0)
        _guide_line(push_ax, x=0.0)
        for colour, beta in zip(palette, betas):
            policy_chosen = grid.clone().requires_grad_(True)
            zeros = torch.zeros_like(grid)
            output = preference_loss("dpo", policy_chosen, zeros, zeros, zeros, beta=beta)
            (gradient,) = torch.autograd.grad(output.losses.sum(), policy_chosen)
            loss_ax.plot(grid, output.losses.detach(), color=colour, label=f"β = {beta:g}")
            push_ax.plot(grid, gradient.abs(), color=colour, label=f"β = {beta:g}")
        loss_ax.set(xlabel="log-ratio margin Δρ = ρ_w − ρ_l (nats)", ylabel="DPO loss ℓ (nats)")
        push_ax.set(
            xlabel="log-ratio margin Δρ = ρ_w − ρ_l (nats)",
            ylabel="push |∂ℓ/∂ log π(y_w|x)| (log scale)",
            yscale="log",
            ylim=(1e-4, 2.0),
        )
        loss_ax.set_title("Loss")
        push_ax.set_title("How hard one pair pushes")
        push_ax.legend(loc="lower left")
        return _finish(fig)


# --------------------------------------------------------------------------------------------------
# CAPO's weights
# --------------------------------------------------------------------------------------------------

_SOURCE_AXES = {
    "sigmoid": ("implicit margin m (nats)", (-6.0, 6.0)),
    "implicit": ("implicit margin m (nats)", (-6.0, 6.0)),
    "batch": ("standardised margin (m − batch mean) / batch std", (-6.0, 6.0)),
    "reference": ("reference margin d_ref (nats/token)", (-4.0, 4.0)),
    "policy": ("policy margin d (nats/token)", (-4.0, 4.0)),
}


def _source_signals(source: str, grid: torch.Tensor) -> tuple[ConfidenceSignals, torch.Tensor]:
    """Signals for a grid of pairs that differ only in the signal this source reads; and the x values."""
    zeros, ones = torch.zeros_like(grid), torch.ones_like(grid)
    if source in ("sigmoid", "implicit"):
        return ConfidenceSignals(grid, zeros, zeros, ones, ones), grid
    if source == "batch":
        # One batch whose margins spread like a normal distribution (its quantiles), centred at 1 nat.
        probabilities = torch.linspace(-0.997, 0.997, grid.numel())
        margins = 1.0 + 2.0 * math.sqrt(2.0) * torch.erfinv(probabilities)
        return ConfidenceSignals(margins, zeros, zeros, ones, ones), (
            margins - margins.mean()
        ) / margins.std()
    if source == "reference":
        return ConfidenceSignals(zeros, grid, zeros, ones, ones), grid
    if source == "policy":
        return ConfidenceSignals(zeros, zeros, grid, ones, ones), grid
    raise ValueError(
        f"plot_weight_vs_margin draws the built-in sources {sorted(_SOURCE_AXES)}; got {source!r}"
    )


def plot_weight_vs_margin(
    gammas: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    sources: Sequence[str] = ("sigmoid", "batch", "reference", "policy"),
    tau: float | Mapping[str, float] = 1.0,
    *,
    points: int = 241,
) -> Figure:
    """CAPO's unnormalised weight w = c**gamma against the signal each confidence source reads.

    One panel per source; one line per gamma. The weights come from
    ``capo_tutorial.losses.capo_weights`` with ``normalize=False`` on a grid of pairs that differ
    only in that source's signal (for "batch", the grid is the batch, and the x-axis is each
    pair's margin standardised over it; the batch's margins are spread like a normal distribution).

    Args:
        gammas: focusing exponents, one line each (gamma = 0 is DPO's flat weight 1).
        sources: built-in confidence sources, one panel each.
        tau: the temperature, one for all sources or a mapping source -> tau.
        points: grid size.

    Returns:
        The figure; each panel has ``len(gammas)`` lines.
    """
    unknown = [source for source in sources if source not in _SOURCE_AXES]
    if unknown:
        raise ValueError(
            f"plot_weight_vs_margin draws the built-in sources {sorted(_SOURCE_AXES)}; got {unknown} "
            "(a callable source reads several signals at once: plot its weights against the one you choose)"
        )
    palette = _capo_colours(len(gammas))
    columns = min(len(sources), 2)
    rows = math.ceil(len(sources) / columns)
    with house_style():
        fig, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.5 * rows), squeeze=False)
        for ax, source in zip(axes.flat, sources):
            source_tau = tau[source] if isinstance(tau, Mapping) else tau
            xlabel, (low, high) = _SOURCE_AXES[source]
            grid = torch.linspace(low, high, points)
            signals, x = _source_signals(source, grid)
            _guide_line(ax, x=0.0)
            for colour, gamma in zip(palette, gammas):
                weights = capo_weights(signals, gamma=gamma, tau=source_tau, source=source, normalize=False)
                ax.plot(x, weights, color=colour, linewidth=2, label=f"γ = {gamma:g}")
            ax.set(xlabel=xlabel, ylabel=r"weight $w = c^{\gamma}$ (unnormalised)", ylim=(-0.03, 1.05))
            ax.set_title(f'source "{source}", τ = {source_tau:g}')
        for ax in list(axes.flat)[len(sources) :]:
            ax.set_visible(False)
        axes.flat[0].legend(loc="upper left")
        return _finish(fig)


# --------------------------------------------------------------------------------------------------
# Chapter 1: the KL-regularised optimal policy
# --------------------------------------------------------------------------------------------------


def plot_tilted_policy(
    rewards: Sequence[float],
    reference_probs: Sequence[float],
    betas: Sequence[float] = (0.25, 1.0, 4.0),
    *,
    response_labels: Sequence[str] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Bars of the reference policy and of the optimal policy pi* ∝ pi_ref * exp(r / beta) per beta.

    This is the closed form of the KL-regularised RLHF objective for one prompt with a handful of
    possible responses (a softmax of log pi_ref + r / beta).

    Args:
        rewards: (K,) reward r(x, y) of each response, in nats.
        reference_probs: (K,) pi_ref(y|x), positive (normalised here).
        betas: the KL strengths to draw.
        response_labels: (K,) names of the responses (default y1..yK with their rewards).
        ax: draw into this axes.

    Returns:
        The figure; the axes holds 1 + len(betas) groups of K bars (reference first).
    """
    reward = torch.as_tensor(rewards, dtype=torch.float64)
    reference = torch.as_tensor(reference_probs, dtype=torch.float64)
    if reward.shape != reference.shape or reward.dim() != 1:
        raise ValueError("rewards and reference_probs must be 1-D with one entry per response")
    if not bool((reference > 0).all()):
        raise ValueError("reference_probs must be > 0 for every response")
    reference = reference / reference.sum()
    names = response_labels or [f"y{k + 1}\nr = {r:+.1f}" for k, r in enumerate(reward.tolist())]
    columns = {"π_ref": reference}
    for beta in betas:
        columns[f"π*, β = {beta:g}"] = torch.softmax(reference.log() + reward / beta, dim=0)
    frame = pd.DataFrame({key: value.numpy() for key, value in columns.items()}, index=names)
    long = frame.reset_index(names="response").melt(id_vars="response", var_name="policy", value_name="p")
    colours = ["0.6", *sns.color_palette("crest", len(betas))]
    with house_style():
        fig, ax = _new_axes(ax, (8, 3.6))
        sns.barplot(long, x="response", y="p", hue="policy", palette=colours, ax=ax)
        ax.set(xlabel="response y (reward r(x, y) in nats)", ylabel="probability π(y | x)")
        ax.legend(title=None, loc="upper right")
        return _finish(fig)


# --------------------------------------------------------------------------------------------------
# Experiments: noise curves, training curves, per-language bars, reliability diagrams
# --------------------------------------------------------------------------------------------------


def plot_accuracy_vs_noise(
    results: pd.DataFrame,
    *,
    x: str = "noise",
    y: str = "accuracy",
    hue: str = "method",
    baselines: Mapping[str, float] | None = None,
    xlabel: str = "training labels flipped (%)",
    ylabel: str = "reward accuracy on clean test pairs (fraction)",
    ax: Axes | None = None,
) -> Figure:
    """Mean ± standard deviation over seeds of ``y`` against ``x``, one line per ``hue``; seeds as dots.

    Args:
        results: long DataFrame, one row per run (e.g. columns method, noise, seed, accuracy);
            ``x`` is a fraction in [0, 1] (shown in %), ``y`` a fraction.
        baselines: label -> value drawn as horizontal dashed lines (e.g. the reference model's own
            pair ranking accuracy).
        ax: draw into this axes.

    Returns:
        The figure; the axes holds one error-bar line per hue level (label = the level), in order
        of first appearance.
    """
    # Over 60 lines with its docstring: one figure drawn top to bottom (check, lay out, one line per
    # hue level, baselines, axes); pieces split out would only pass the axes around.
    require_columns(results, {x, y, hue}, "results")
    levels = list(dict.fromkeys(results[hue]))
    palette = method_palette(levels)
    xs = np.sort(results[x].unique())
    spacing = float(np.min(np.diff(xs))) if len(xs) > 1 else 1.0
    offsets = np.linspace(-0.12, 0.12, len(levels)) * spacing if len(levels) > 1 else [0.0]
    with house_style():
        fig, ax = _new_axes(ax, (8.5, 4))
        for offset, level in zip(offsets, levels):
            rows = results[results[hue] == level]
            summary = summarise_seeds(_with_seed(rows), y, by=[x]).set_index(x).reindex(xs)
            colour = palette[level]
            ax.scatter(
                rows[x].to_numpy(dtype=float) + offset,
                rows[y].to_numpy(dtype=float),
                color=colour,
                alpha=0.35,
                s=14,
                label="_seeds",
            )
            ax.errorbar(
                summary.index.to_numpy(dtype=float) + offset,
                summary["mean"].to_numpy(dtype=float),
                yerr=summary["std"].fillna(0.0).to_numpy(dtype=float),
                color=colour,
                marker="o",
                capsize=3,
                linewidth=1.8,
                label=str(level),
            )
        for index, (label, value) in enumerate((baselines or {}).items()):
            ax.axhline(
                value, color="0.35", linestyle=("--", "-.", ":")[index % 3], linewidth=1.1, label=label
            )
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_xticks(xs)
        ax.set(xlabel=xlabel, ylabel=ylabel)
        _legend_beside(ax)
        return _finish(fig)


METRIC_LABELS: dict[str, str] = {
    "loss": "loss (nats)",
    "rewards/accuracies": "reward accuracy (fraction)",
    "rewards/margins": "reward margin (nats)",
    "rewards/chosen": "chosen reward r_w (nats)",
    "rewards/rejected": "rejected reward r_l (nats)",
    "eval_loss": "evaluation loss (nats)",
    "eval_rewards/accuracies": "evaluation reward accuracy (fraction)",
    "eval_rewards/margins": "evaluation reward margin (nats)",
}
"""Axis labels (with units) for the metric names TRL logs and ``capo_tutorial.training`` records."""


def plot_training_curves(
    history: pd.DataFrame,
    metrics: Sequence[str] = ("loss", "rewards/accuracies", "rewards/margins"),
    *,
    x: str = "step",
    hue: str | None = None,
    style: str | None = None,
    labels: Mapping[str, str] | None = None,
) -> Figure:
    """One panel per metric against the optimizer step; runs told apart by ``hue`` (and ``style``).

    Repeated rows (e.g. several seeds at the same step and hue) are drawn as mean ± standard
    deviation by seaborn.

    Args:
        history: DataFrame with a column ``x`` and the metrics as columns, TRL's names
            (loss, rewards/accuracies, rewards/margins, ...); rows with a missing metric are skipped.
        metrics: the columns to draw, one panel each.
        hue, style: optional columns that tell runs apart (e.g. "method", "seed").
        labels: y-axis label per metric (default: :data:`METRIC_LABELS`, else the column name).

    Returns:
        The figure with ``len(metrics)`` panels.
    """
    require_columns(history, {x, *metrics, *(c for c in (hue, style) if c)}, "history")
    names = {**METRIC_LABELS, **(labels or {})}
    palette = method_palette([str(v) for v in dict.fromkeys(history[hue])]) if hue else None
    data = history.assign(**{hue: history[hue].astype(str)}) if hue else history
    with house_style():
        legend_width = 2.6 if (hue or style) else 0.0
        fig, axes = plt.subplots(
            1, len(metrics), figsize=(4.6 * len(metrics) + legend_width, 3.6), squeeze=False
        )
        for index, (ax, metric) in enumerate(zip(axes.flat, metrics)):
            rows = data.dropna(subset=[metric])
            sns.lineplot(
                rows,
                x=x,
                y=metric,
                hue=hue,
                style=style,
                palette=palette,
                errorbar="sd",
                ax=ax,
                legend=index == len(metrics) - 1,
            )
            ax.set(xlabel="optimizer step" if x == "step" else x, ylabel=names.get(metric, metric))
        if hue or style:
            _legend_beside(axes.flat[-1])
        return _finish(fig)


def plot_per_language(
    tables: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    chance: float | None = 0.5,
    ax: Axes | None = None,
) -> Figure:
    """Reward accuracy per language with its interval, one bar group per language, one bar per method.

    Args:
        tables: a table of ``metrics.per_language_summary`` (index language; columns accuracy,
            accuracy_low, accuracy_high), or a mapping method -> such a table. The "all" row, if
            present, is drawn last.
        chance: draw a dotted line at this accuracy (None: none).
        ax: draw into this axes.

    Returns:
        The figure; its axes holds one bar container per method (``ax.containers``), bars in the
        order of the languages on the x-axis.
    """
    named = {"model": tables} if isinstance(tables, pd.DataFrame) else dict(tables)
    for method, table in named.items():
        missing = {"accuracy", "accuracy_low", "accuracy_high"} - set(table.columns)
        if missing:
            raise ValueError(f"table {method!r} lacks the columns {sorted(missing)}")
    languages = sorted({str(lang) for table in named.values() for lang in table.index} - {"all"})
    if any("all" in table.index for table in named.values()):
        languages.append("all")
    palette = method_palette(list(named))
    width = 0.8 / len(named)
    positions = np.arange(len(languages))
    with house_style():
        fig, ax = _new_axes(ax, (max(6.0, 0.55 * len(languages) * max(1, len(named) ** 0.5) + 2), 3.8))
        for index, (method, table) in enumerate(named.items()):
            table = table.reindex(languages)
            accuracy = table["accuracy"].to_numpy(dtype=float)
            errors = np.vstack(
                [
                    accuracy - table["accuracy_low"].to_numpy(float),
                    table["accuracy_high"].to_numpy(float) - accuracy,
                ]
            )
            ax.bar(
                positions + (index - (len(named) - 1) / 2) * width,
                accuracy,
                width=width,
                yerr=np.nan_to_num(errors),
                color=palette[method],
                capsize=2,
                error_kw={"linewidth": 0.8},
                label=method,
            )
        if chance is not None:
            _guide_line(ax, y=chance)
        ax.set_xticks(positions, languages)
        ax.set(xlabel="language", ylabel="reward accuracy (95% interval)", ylim=(0, 1.02))
        if len(named) > 1:
            ax.legend(loc="lower left", fontsize="small", ncols=min(len(named), 4))
        return _finish(fig)


def plot_reliability(
    tables: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    ax: Axes | None = None,
) -> Figure:
    """Reliability diagram: observed frequency against predicted probability, per ``calibration_table``.

    Args:
        tables: a table of ``metrics.calibration_table`` (columns mean_confidence, accuracy, n)
            or a mapping model -> such a table. Marker area grows with the bin's count.
        ax: draw into this axes.

    Returns:
        The figure; its axes holds one line per table (label = the name), plus the dotted diagonal.
    """
    named = {"model": tables} if isinstance(tables, pd.DataFrame) else dict(tables)
    palette = method_palette(list(named))
    with house_style():
        fig, ax = _new_axes(ax, (4.6, 4.4))
        ax.plot([0, 1], [0, 1], color="0.55", linestyle=":", linewidth=1, label="_perfect calibration")
        for name, table in named.items():
            missing = {"mean_confidence", "accuracy", "n"} - set(table.columns)
            if missing:
                raise ValueError(f"table {name!r} lacks the columns {sorted(missing)}")
            colour = palette[name]
            ax.plot(table.mean_confidence, table.accuracy, color=colour, marker="o", label=name, zorder=3)
            sizes = 8 + 120 * table.n / max(float(table.n.max()), 1.0)
            ax.scatter(table.mean_confidence, table.accuracy, s=sizes, color=colour, alpha=0.3, label="_n")
        ax.set(
            xlabel="predicted probability σ(m) (bin mean)",
            ylabel="observed frequency the response wins",
            xlim=(0, 1),
            ylim=(0, 1),
            aspect="equal",
        )
        if len(named) > 1:
            ax.legend(loc="upper left", fontsize="small")
        return _finish(fig)


# --------------------------------------------------------------------------------------------------
# Chapter 3: multilingual data (tokenizer fertility, label noise per language, padding)
# --------------------------------------------------------------------------------------------------

__all__ += ["plot_label_noise", "plot_padding_fraction", "plot_tokenizer_fertility"]

_FERTILITY_PANELS = (
    ("mean_tokens", "tokens per pair (prompt + chosen + rejected)"),
    ("tokens_per_char", "tokens per character (fertility)"),
)


def _language_label(row: pd.Series) -> str:
    """'bn · Beng': the language with its script, when the table has one."""
    script = row.get("script")
    return f"{row['language']} · {script}" if isinstance(script, str) and script else str(row["language"])


def plot_tokenizer_fertility(
    tables: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    order: Sequence[str] | None = None,
) -> Figure:
    """What the same content costs per language: tokens per pair and tokens per character.

    Args:
        tables: a table of ``capo_tutorial.analysis.language_statistics`` (columns language,
            [script], mean_tokens, tokens_per_char), or a mapping tokenizer name -> such a table,
            computed on the same pairs.
        order: the languages, top to bottom (default: the first table's tokens per pair, fewest
            first).

    Returns:
        The figure; axes[0] holds the tokens per pair, axes[1] the tokens per character, one bar per
        language and tokenizer (``ax.containers``: one per tokenizer, or one per script when a single
        tokenizer is drawn, coloured by script).
    """
    named = {"tokenizer": tables} if isinstance(tables, pd.DataFrame) else dict(tables)
    if not named:
        raise ValueError("plot_tokenizer_fertility needs at least one table")
    for name, table in named.items():
        missing = {"language", "mean_tokens", "tokens_per_char"} - set(table.columns)
        if missing:
            raise ValueError(f"table {name!r} lacks the columns {sorted(missing)} (see language_statistics)")
    first = next(iter(named.values()))
    languages = list(order) if order is not None else list(first.sort_values("mean_tokens").language)
    labels = {row["language"]: _language_label(row) for _, row in first.iterrows()}
    positions = np.arange(len(languages))
    single = len(named) == 1
    with house_style():
        height = 1.0 + 0.3 * len(languages) * (1.0 if single else max(1.0, 0.6 * len(named)))
        fig, axes = plt.subplots(1, 2, figsize=(11, height), sharey=True)
        for ax, (column, xlabel) in zip(axes, _FERTILITY_PANELS):
            if single and "script" in first.columns:
                _fertility_bars_by_script(ax, first.set_index("language"), languages, column)
            else:
                _fertility_bars_by_tokenizer(ax, named, languages, column)
            ax.set(xlabel=xlabel)
        axes[0].set_yticks(positions, [labels.get(lang, lang) for lang in languages])
        ylabel = "language · script" if "script" in first.columns else "language"
        axes[0].set(ylabel=ylabel, ylim=(len(languages) - 0.5, -0.5))  # first on top
        title = "script" if single and "script" in first.columns else "tokenizer"
        axes[-1].legend(title=title, loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
        return _finish(fig)


def _fertility_bars_by_script(ax: Axes, table: pd.DataFrame, languages: Sequence[str], column: str) -> None:
    """One bar per language, coloured (and labelled) by script: one bar container per script."""
    scripts = list(dict.fromkeys(table.loc[languages, "script"]))
    palette = dict(zip(scripts, sns.color_palette("tab10", len(scripts))))
    for script in scripts:
        index = [i for i, lang in enumerate(languages) if table.loc[lang, "script"] == script]
        values = table.loc[[languages[i] for i in index], column].to_numpy(float)
        ax.barh(index, values, height=0.72, color=palette[script], label=script)


def _fertility_bars_by_tokenizer(
    ax: Axes, named: Mapping[str, pd.DataFrame], languages: Sequence[str], column: str
) -> None:
    """Grouped bars: one bar container per tokenizer, bars in the order of ``languages``."""
    palette = dict(zip(named, sns.color_palette("colorblind", len(named))))
    width = 0.8 / len(named)
    for index, (name, table) in enumerate(named.items()):
        values = table.set_index("language").reindex(languages)[column].to_numpy(float)
        offset = (index - (len(named) - 1) / 2) * width
        ax.barh(np.arange(len(languages)) + offset, values, height=width, color=palette[name], label=name)


def plot_label_noise(table: pd.DataFrame | Sequence[Mapping[str, Any]], *, ax: Axes | None = None) -> Figure:
    """Train labels flipped per language: realised random and systematic flips (stacked) and the asked rate.

    Args:
        table: one row per language with columns language, noise_asked, noise_random_realised,
            noise_systematic_realised and optionally resource_tier (1 high, 2 mid, 3 low) and name:
            the ``languages`` entries of ``capo_tutorial.testbed.testbed_card``. Languages are drawn
            in the given order (sort by tier first to group them).
        ax: draw into this axes.

    Returns:
        The figure; its axes holds two bar containers (labels "random flips" and "systematic flips",
        one bar per language) and the asked rates as a line of markers labelled "asked rate".
    """
    frame = pd.DataFrame(list(table)) if not isinstance(table, pd.DataFrame) else table
    needed = {"language", "noise_asked", "noise_random_realised", "noise_systematic_realised"}
    missing = needed - set(frame.columns)
    if missing:
        raise ValueError(f"table lacks the columns {sorted(missing)}; pass testbed_card(...)['languages']")
    positions = np.arange(len(frame))
    random_share = frame["noise_random_realised"].to_numpy(float)
    systematic_share = frame["noise_systematic_realised"].to_numpy(float)
    colours = sns.color_palette("colorblind", 4)
    with house_style():
        fig, ax = _new_axes(ax, (max(6.0, 0.42 * len(frame) + 2.5), 3.8))
        ax.bar(positions, random_share, width=0.7, color=colours[0], label="random flips")
        ax.bar(
            positions,
            systematic_share,
            width=0.7,
            bottom=random_share,
            color=colours[3],
            hatch="//",
            edgecolor="white",
            label="systematic flips",
        )
        ax.plot(
            positions,
            frame["noise_asked"].to_numpy(float),
            linestyle="none",
            marker="_",
            markersize=18,
            markeredgewidth=2.2,
            color="0.15",
            label="asked rate",
        )
        if "resource_tier" in frame.columns:
            tiers = frame["resource_tier"].to_numpy()
            for boundary in np.flatnonzero(tiers[1:] != tiers[:-1]):
                _guide_line(ax, x=boundary + 0.5)
        ax.set_xticks(positions, frame["language"].astype(str))
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        top = float(np.nanmax(np.r_[random_share + systematic_share, frame["noise_asked"].to_numpy(float)]))
        ax.set(
            xlabel="language" + (" (high → low resource)" if "resource_tier" in frame.columns else ""),
            ylabel="train labels flipped (%)",
            ylim=(0, max(0.05, top * 1.2)),
        )
        ax.legend(loc="upper left", fontsize="small", ncols=3)
        return _finish(fig)


def plot_padding_fraction(
    results: pd.DataFrame,
    *,
    x: str = "batch_size",
    y: str = "padding",
    hue: str = "batching",
    ax: Axes | None = None,
) -> Figure:
    """Share of the collated batch that is padding against the batch size, one line per batching strategy.

    Args:
        results: long DataFrame, one row per (strategy, batch size[, seed]) with the padding fraction
            of ``capo_tutorial.data.padding_fraction`` in ``y`` (a fraction in [0, 1]). Repeated rows
            (seeds) are drawn as mean ± standard deviation.
        x, y, hue: the columns of the batch size (pairs per batch), the padding fraction and the
            strategy.
        ax: draw into this axes.

    Returns:
        The figure; its axes holds one line per strategy (label = the strategy), x on a log2 scale.
    """
    require_columns(results, {x, y, hue}, "results")
    data = results.assign(**{hue: results[hue].astype(str)})
    levels = list(dict.fromkeys(data[hue]))
    palette = dict(zip(levels, sns.color_palette("colorblind", len(levels))))
    with house_style():
        fig, ax = _new_axes(ax, (6.2, 3.8))
        for level in levels:
            summary = data[data[hue] == level].groupby(x)[y].agg(["mean", "std"]).fillna(0.0)
            sizes, mean, spread = summary.index.to_numpy(float), summary["mean"], summary["std"]
            ax.fill_between(sizes, mean - spread, mean + spread, color=palette[level], alpha=0.2, label="_sd")
            ax.plot(sizes, mean.to_numpy(float), color=palette[level], marker="o", label=level)
        ax.set_xscale("log", base=2)
        sizes = np.sort(data[x].unique())
        ax.set_xticks(sizes, [f"{size:g}" for size in sizes])
        ax.minorticks_off()
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set(
            xlabel="batch size (pairs per batch, log scale)",
            ylabel="padding (% of token slots)",
            ylim=(0, None),
        )
        ax.legend(title=None, loc="upper left", fontsize="small")
        return _finish(fig)


# --------------------------------------------------------------------------------------------------
# Chapter 4: training runs (CAPO's weights over training; flipped against clean training pairs)
# --------------------------------------------------------------------------------------------------

__all__ += ["plot_label_agreement", "plot_weight_by_label", "plot_weight_statistics"]

_WEIGHT_COLUMNS = ("weights/mean", "weights/min", "weights/max")
_LABEL_GROUPS = ((False, "clean label"), (True, "flipped label"))


def plot_weight_statistics(
    history: pd.DataFrame,
    *,
    x: str = "step",
    hue: str | None = "method",
    ax: Axes | None = None,
) -> Figure:
    """CAPO's per-pair weights during training: the batch mean as a line, the min-max range as a band.

    Args:
        history: training history with the columns ``weights/mean``, ``weights/min`` and
            ``weights/max`` that ``capo_tutorial.training`` logs (each averaged over the logging
            interval), a column ``x`` and, optionally, ``hue`` telling runs apart; rows without the
            weight columns (evaluation rows, the SFT stage) are skipped.
        x: the optimizer-step column.
        hue: the column naming the run (None: one run).
        ax: draw into this axes.

    Returns:
        The figure; its axes holds one line per run (label = the run, y = weights/mean) and one
        filled band per run between weights/min and weights/max (``ax.collections``), in order of
        first appearance.
    """
    require_columns(history, {x, *_WEIGHT_COLUMNS, *([hue] if hue else [])}, "history")
    rows = history.dropna(subset=list(_WEIGHT_COLUMNS))
    runs = list(dict.fromkeys(rows[hue].astype(str))) if hue else ["weights"]
    palette = method_palette(runs)
    with house_style():
        fig, ax = _new_axes(ax, (7.0, 3.6))
        _guide_line(ax, y=1.0)
        # Dashes from the second run on: runs whose weights are all 1 (DPO) stay visible under CAPO's.
        for index, run in enumerate(runs):
            part = rows[rows[hue].astype(str) == run] if hue else rows
            part = part.sort_values(x)
            steps = part[x].to_numpy(float)
            ax.fill_between(
                steps,
                part["weights/min"].to_numpy(float),
                part["weights/max"].to_numpy(float),
                color=palette[run],
                alpha=0.22,
                linewidth=0,
                label=f"_{run} min-max",
            )
            ax.plot(
                steps,
                part["weights/mean"].to_numpy(float),
                color=palette[run],
                linewidth=2,
                linestyle=("-", "--", "-.", ":")[index % 4],
                label=run,
            )
        ax.set(
            xlabel="optimizer step" if x == "step" else x,
            ylabel=r"per-pair weight $w_i$ (dimensionless)",
            ylim=(0, None),
        )
        _legend_beside(ax)
        return _finish(fig)


def _label_groups(table: pd.DataFrame, flipped: str) -> list[tuple[str, pd.DataFrame]]:
    """(name, rows) for the clean and the flipped pairs of ``table``, skipping an empty group."""
    is_flipped = table[flipped].astype(bool)
    groups = [(name, table[is_flipped == value]) for value, name in _LABEL_GROUPS]
    return [(name, rows) for name, rows in groups if len(rows)]


def plot_weight_by_label(
    table: pd.DataFrame,
    *,
    weight: str = "weight",
    flipped: str = "flipped",
    bins: int | Sequence[float] = 20,
    xlabel: str = r"CAPO weight $c^{\gamma}$ before batch normalisation (dimensionless)",
    ax: Axes | None = None,
) -> Figure:
    """Histogram of a per-pair weight (or any score) for pairs with a clean and with a flipped label.

    Each group is normalised to 100%, so that a small flipped group stays visible beside a large
    clean one.

    Args:
        table: one row per training pair with a numeric column ``weight`` and a boolean column
            ``flipped`` (the testbed's ground truth: True where the label was flipped).
        bins: the number of equal-width bins over the weights' range, or the bin edges.
        xlabel: the x-axis label (with units).
        ax: draw into this axes.

    Returns:
        The figure; its axes holds one bar container per group ("clean label", "flipped label",
        bars side by side), bar heights in percent of the group's pairs.
    """
    require_columns(table, {weight, flipped}, "table")
    groups = _label_groups(table, flipped)
    edges = np.histogram_bin_edges(table[weight].to_numpy(float), bins=bins)
    width = np.diff(edges) / (len(groups) + 0.5)
    colours = {
        "clean label": sns.color_palette("colorblind")[0],
        "flipped label": sns.color_palette("colorblind")[3],
    }
    with house_style():
        fig, ax = _new_axes(ax, (7.0, 3.6))
        for index, (name, rows) in enumerate(groups):
            counts, _ = np.histogram(rows[weight].to_numpy(float), bins=edges)
            ax.bar(
                edges[:-1] + (index + 0.25) * width,
                100.0 * counts / len(rows),
                width=width,
                align="edge",
                color=colours[name],
                label=f"{name} (n = {len(rows)})",
            )
        ax.set(xlabel=xlabel, ylabel="pairs of the group (%)")
        ax.legend(loc="upper left", fontsize="small")
        return _finish(fig)


def plot_label_agreement(
    tables: Mapping[str, pd.DataFrame],
    *,
    correct: str = "correct",
    flipped: str = "flipped",
    ylabel: str = "training pairs ranked as labelled (%)",
    ax: Axes | None = None,
) -> Figure:
    """How often each model ranks training pairs the way their (possibly flipped) label says.

    On clean pairs this is fitting the data; on flipped pairs it is memorising the noise. Bars show
    the share with a 95% Wilson interval (:func:`capo_tutorial.metrics.wilson_interval`).

    Args:
        tables: model name -> one row per training pair with a boolean ``correct`` (the model
            ranks the labelled chosen response first) and a boolean ``flipped``.
        ylabel: the y-axis label.
        ax: draw into this axes.

    Returns:
        The figure; its axes holds one bar container per model (label = the name), one bar per group
        ("clean label", then "flipped label"), heights in percent.
    """
    # Over 60 lines with its docstring: one figure drawn top to bottom (check, one bar group per
    # model with its intervals, axes).
    for name, table in tables.items():
        missing = {correct, flipped} - set(table.columns)
        if missing:
            raise ValueError(f"table {name!r} lacks the columns {sorted(missing)}")
    group_names = [name for _, name in _LABEL_GROUPS]
    palette = method_palette(list(tables))
    width = 0.8 / max(len(tables), 1)
    positions = np.arange(len(group_names))
    with house_style():
        fig, ax = _new_axes(ax, (6.4, 3.8))
        for index, (model, table) in enumerate(tables.items()):
            groups = dict(_label_groups(table, flipped))
            shares, errors = [], []
            for group in group_names:
                rows = groups.get(group)
                if rows is None:
                    shares.append(np.nan)
                    errors.append((0.0, 0.0))
                    continue
                share, low, high = accuracy_interval(rows[correct].astype(bool))
                shares.append(100 * share)
                errors.append((100 * (share - low), 100 * (high - share)))
            bars = ax.bar(
                positions + (index - (len(tables) - 1) / 2) * width,
                shares,
                width=width,
                yerr=np.array(errors).T,
                color=palette[model],
                capsize=2,
                error_kw={"linewidth": 0.8},
                label=model,
            )
            shown = ["" if np.isnan(share) else f"{share:.0f}" for share in shares]
            ax.bar_label(bars, labels=shown, padding=2, fontsize="x-small")
        ax.set_xticks(positions, group_names)
        ax.set(xlabel="training pairs", ylabel=ylabel, ylim=(0, 109))
        _legend_beside(ax)
        return _finish(fig)


# --------------------------------------------------------------------------------------------------
# Chapters 5 and 6: experiment grids (seeds reduced to mean and spread; paired differences; sweeps)
# --------------------------------------------------------------------------------------------------

__all__ += [
    "plot_difference_heatmap",
    "plot_metric_by_language",
    "plot_noise_panels",
    "plot_paired_differences",
    "plot_sweep",
]

_SPREADS = {"sd": "± standard deviation", "range": "min–max", "ci": "± 95% t-interval"}


def _language_order(values: Sequence[str]) -> list[str]:
    """Languages sorted, the pooled "all" last."""
    languages = sorted({str(value) for value in values} - {"all"})
    return [*languages, "all"] if "all" in set(map(str, values)) else languages


def _with_seed(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` as they are, or, without a seed column, each row counted as a run of its own seed."""
    return rows if "seed" in rows.columns else rows.assign(seed=np.arange(len(rows)))


def _seed_summary(rows: pd.DataFrame, y: str, x: str) -> pd.DataFrame:
    """``analysis.summarise_seeds`` of ``y`` per value of ``x`` (as text), indexed by it."""
    return summarise_seeds(rows.assign(**{x: rows[x].astype(str)}), y, by=[x]).set_index(x)


def _spread(summary: pd.Series, spread: str) -> tuple[float, float]:
    """(below, above) the mean of a ``summarise_seeds`` row: one standard deviation each way (0 for
    one seed), the distance to min and max, or half the 95% Student-t interval of the mean (for
    paired differences: the paired interval; 0 for one seed)."""
    if spread == "range":
        return summary["mean"] - summary["min"], summary["max"] - summary["mean"]
    if spread == "ci":
        half = interval_half_width(float(summary["std"]), int(summary["seeds"]))
        return (0.0, 0.0) if math.isnan(half) else (half, half)
    deviation = 0.0 if pd.isna(summary["std"]) else float(summary["std"])
    return deviation, deviation


def _check_spread(spread: str) -> None:
    if spread not in _SPREADS:
        raise ValueError(f"spread is one of {sorted(_SPREADS)}; got {spread!r}")


def _level_palette(levels: Sequence[Any]) -> dict[Any, tuple[float, float, float]]:
    """Colours for a hue: the method palette for method names, a sequential palette for numbers."""
    if levels and all(isinstance(level, (int, float, np.number)) for level in levels):
        return dict(zip(levels, sns.color_palette("crest", len(levels))))
    return {level: colour for level, colour in zip(levels, method_palette([str(v) for v in levels]).values())}


def plot_metric_by_language(
    runs: pd.DataFrame,
    *,
    y: str = "accuracy",
    x: str = "language",
    hue: str = "method",
    spread: str = "sd",
    ylabel: str = "reward accuracy on clean test pairs (fraction)",
    chance: float | None = 0.5,
    ax: Axes | None = None,
) -> Figure:
    """Mean over seeds of ``y`` per language (bars), its spread (error bars) and each seed (dots).

    Args:
        runs: one row per run and language (the tidy rows of a grid, one margin class), with the
            columns ``x``, ``y``, ``hue`` and seed. The pooled language "all" is drawn last.
        spread: "sd" (± one standard deviation over seeds), "range" (min to max) or "ci" (the 95%
            Student-t interval of the mean).
        ylabel: the y-axis label, with units (e.g. "reward margin (nats)").
        chance: draw a dotted line at this value (None: none).
        ax: draw into this axes.

    Returns:
        The figure; its axes holds one bar container per hue level (label = the level, bar heights
        the means, in the order of the x-axis), in order of first appearance.
    """
    # Over 60 lines with its docstring: one figure drawn top to bottom (check, lay out, per hue level
    # the seed dots and the bars of their means, axes); the numbers come from summarise_seeds.
    _check_spread(spread)
    require_columns(runs, {x, y, hue, "seed"}, "runs")
    rows = runs.dropna(subset=[y])
    categories = _language_order(rows[x]) if x == "language" else list(dict.fromkeys(rows[x].astype(str)))
    levels = list(dict.fromkeys(rows[hue]))
    palette = _level_palette(levels)
    width = 0.8 / max(len(levels), 1)
    positions = np.arange(len(categories))
    with house_style():
        size = (max(6.0, 0.5 * len(categories) * max(1.0, len(levels) ** 0.6) + 2.5), 3.9)
        fig, ax = _new_axes(ax, size)
        for index, level in enumerate(levels):
            part = rows[rows[hue] == level]
            summary = _seed_summary(part, y, x)
            offset = (index - (len(levels) - 1) / 2) * width
            means, errors = [], []
            for category in categories:
                values = part[part[x].astype(str) == category][y]
                present = category in summary.index
                means.append(float(summary.loc[category, "mean"]) if present else np.nan)
                errors.append(_spread(summary.loc[category], spread) if present else (0.0, 0.0))
                ax.scatter(
                    np.full(len(values), positions[categories.index(category)] + offset),
                    values.to_numpy(float),
                    s=9,
                    color="0.15",
                    alpha=0.55,
                    zorder=3,
                    label="_seeds",
                )
            ax.bar(
                positions + offset,
                means,
                width=width,
                yerr=np.array(errors).T,
                color=palette[level],
                capsize=2,
                error_kw={"linewidth": 0.8},
                label=str(level),
            )
        if chance is not None:
            _guide_line(ax, y=chance)
        ax.set_xticks(positions, categories)
        ax.set(xlabel=x if x != "language" else "language (all = pooled)", ylabel=ylabel)
        _legend_beside(ax, title=f"bars: mean over seeds\nerror bars: {_SPREADS[spread]}\ndots: seeds")
        return _finish(fig)


def plot_paired_differences(
    differences: pd.DataFrame,
    *,
    x: str = "method",
    y: str = "difference",
    hue: str | None = "noise",
    scale: float = 100.0,
    spread: str = "sd",
    ylabel: str = "reward accuracy − DPO's, same seed (points)",
    hue_format: str = "{:.0%} flipped",
    ax: Axes | None = None,
) -> Figure:
    """Paired differences from a baseline: one dot per seed, the mean with its spread, per category.

    Args:
        differences: the table of ``capo_tutorial.analysis.paired_differences`` (columns ``x``,
            ``y``, ``hue``): one row per seed and cell.
        x: the categories along the x-axis (e.g. the method), in order of first appearance.
        hue: a column that splits each category (e.g. the noise rate), dodged; None: no split.
        scale: multiply the differences by this (100: fractions to percentage points).
        spread: "sd", "range" or "ci" (the 95% paired interval over seeds) for the error bars.
        ylabel: the y-axis label, with units.
        hue_format: formats a numeric hue level for the legend.
        ax: draw into this axes.

    Returns:
        The figure; its axes holds one error-bar container per hue level (label = the formatted
        level), whose points are the scaled means in the order of the categories.
    """
    # Over 60 lines with its docstring: one figure drawn top to bottom (check, lay out, per hue level
    # the seed dots and the mean with its spread, axes); the numbers come from summarise_seeds.
    _check_spread(spread)
    require_columns(differences, {x, y, *([hue] if hue else [])}, "differences")
    data = differences.dropna(subset=[y])
    categories = list(dict.fromkeys(data[x].astype(str)))
    levels = list(dict.fromkeys(data[hue])) if hue else [None]
    palette = _level_palette(levels) if hue else {None: sns.color_palette("colorblind")[0]}
    step = 0.7 / max(len(levels), 1)
    with house_style():
        fig, ax = _new_axes(ax, (max(6.0, 0.75 * len(categories) * max(1.0, len(levels) ** 0.5) + 2.5), 3.9))
        _guide_line(ax, y=0.0)
        for index, level in enumerate(levels):
            part = data if level is None else data[data[hue] == level]
            part = part.assign(**{y: scale * part[y]})
            summary = _seed_summary(part, y, x)
            offset = (index - (len(levels) - 1) / 2) * step
            means, errors, positions = [], [], []
            for position, category in enumerate(categories):
                values = part[part[x].astype(str) == category][y]
                if not len(values):
                    continue
                jitter = np.linspace(-0.25, 0.25, len(values)) * step if len(values) > 1 else np.zeros(1)
                ax.scatter(
                    position + offset + jitter, values, s=12, color=palette[level], alpha=0.45, label="_seeds"
                )
                positions.append(position + offset)
                means.append(float(summary.loc[category, "mean"]))
                errors.append(_spread(summary.loc[category], spread))
            if level is None:
                label = f"mean {_SPREADS[spread]}"
            elif isinstance(level, (int, float, np.number)):
                label = hue_format.format(level)
            else:
                label = str(level)
            ax.errorbar(
                np.asarray(positions, float),
                np.asarray(means, float),
                yerr=np.array(errors, float).T.reshape(2, -1),
                color=palette[level],
                marker="D",
                markersize=5,
                linestyle="none",
                capsize=3,
                label=label,
            )
        ax.set_xticks(np.arange(len(categories)), categories)
        ax.set(xlabel=x, ylabel=ylabel)
        if len(categories) > 6 or max(map(len, categories), default=0) > 8:
            ax.tick_params(axis="x", labelrotation=30)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
        _legend_beside(ax, title=f"diamonds: mean {_SPREADS[spread]}\ndots: seeds")
        return _finish(fig)


def plot_difference_heatmap(
    table: pd.DataFrame,
    *,
    colorbar_label: str = "reward accuracy − DPO's (points)",
    fmt: str = "+.1f",
    center: float = 0.0,
    cmap: str = "vlag_r",
    xlabel: str = "language",
    ylabel: str = "method",
    ax: Axes | None = None,
) -> Figure:
    """A grid of differences (e.g. methods x languages), coloured around ``center`` and annotated.

    Args:
        table: a wide DataFrame (index: rows, columns: columns), e.g. the mean paired difference from
            DPO in points per method and language; NaN cells stay blank.
        colorbar_label: the colour bar's label, with units.
        fmt: the format of the annotations.
        center: the value drawn white; the colour scale is symmetric around it.
        cmap: a diverging colour map (the default is blue above the centre, red below).
        ax: draw into this axes.

    Returns:
        The figure; its first axes holds the heatmap (one annotation per finite cell).
    """
    import warnings

    values = table.to_numpy(float)
    if not np.isfinite(values).any():
        raise ValueError("the table has no finite value to draw")
    limit = float(np.nanmax(np.abs(values - center))) or 1.0
    with house_style():
        fig, ax = _new_axes(ax, (0.75 * table.shape[1] + 3.2, 0.42 * table.shape[0] + 1.6))
        with warnings.catch_warnings():  # seaborn 0.13 calls Colormap.set_bad, deprecated in matplotlib 3.11
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            sns.heatmap(
                table.astype(float),
                ax=ax,
                annot=True,
                fmt=fmt,
                center=center,
                cmap=cmap,
                vmin=center - limit,
                vmax=center + limit,
                linewidths=0.5,
                linecolor="white",
                cbar_kws={"label": colorbar_label},
                annot_kws={"fontsize": "small"},
            )
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.tick_params(axis="y", labelrotation=0)
        return _finish(fig)


def plot_sweep(
    runs: pd.DataFrame,
    *,
    y: str = "accuracy",
    variant: str = "method",
    hue: str = "noise",
    baseline: str | None = "dpo",
    highlight: str | None = None,
    xlabel: str = "reward accuracy on clean validation pairs (fraction)",
    ax: Axes | None = None,
) -> Figure:
    """A sweep of variants: one horizontal bar per variant and hue level (e.g. noise rate).

    Seeds, if several, are averaged. The baseline's value at each hue level is drawn as a vertical
    dashed line in that level's colour; the ``highlight`` variant's tick label is set in bold.

    Args:
        runs: one row per run (columns ``variant``, ``hue``, ``y``).
        baseline: the variant drawn as lines rather than bars (None: none).
        highlight: a variant to mark (e.g. the chosen default).
        xlabel: the x-axis label, with units.
        ax: draw into this axes.

    Returns:
        The figure; its axes holds one bar container per hue level (label e.g. "20% flipped"), bars
        in the order of the variants from top to bottom (first appearance, baseline left out).
    """
    # Over 60 lines with its docstring: one figure drawn top to bottom (check, lay out, one bar set
    # per hue level with the baseline's line, axes).
    require_columns(runs, {y, variant, hue}, "runs")
    means = summarise_seeds(_with_seed(runs), y, by=[variant, hue]).set_index([variant, hue])["mean"]
    variants = [v for v in dict.fromkeys(runs[variant].astype(str)) if v != baseline]
    levels = list(dict.fromkeys(runs[hue]))
    palette = _level_palette(levels)
    height = 0.8 / max(len(levels), 1)
    positions = np.arange(len(variants))

    def level_label(level: Any) -> str:
        return f"{level:.0%} flipped" if isinstance(level, (float, np.floating)) else str(level)

    with house_style():
        fig, ax = _new_axes(ax, (8.0, 0.38 * len(variants) * max(1.0, len(levels) ** 0.7) + 1.6))
        for index, level in enumerate(levels):
            widths = [means.get((name, level), np.nan) for name in variants]
            offset = (index - (len(levels) - 1) / 2) * height
            bars = ax.barh(
                positions + offset, widths, height=height, color=palette[level], label=level_label(level)
            )
            ax.bar_label(bars, fmt="%.3f", padding=2, fontsize="x-small")
            if baseline is not None and (baseline, level) in means.index:
                ax.axvline(
                    means[(baseline, level)],
                    color=palette[level],
                    linestyle="--",
                    linewidth=1.2,
                    label=f"{baseline}, {level_label(level)}",
                )
        ax.set_yticks(positions, variants)
        ax.set_ylim(len(variants) - 0.5, -0.5)  # first variant on top
        if highlight is not None and highlight in variants:
            ax.get_yticklabels()[variants.index(highlight)].set_fontweight("bold")
        finite = means.to_numpy(float)
        finite = finite[np.isfinite(finite)]
        low = max(0.0, float(finite.min()) - 0.08) if finite.size else 0.0
        ax.set(xlabel=xlabel, ylabel=variant, xlim=(low, min(1.0, float(finite.max()) + 0.08)))
        _legend_beside(ax)
        return _finish(fig)


def plot_noise_panels(
    results: pd.DataFrame,
    *,
    panel: str = "margin_class",
    panels: Sequence[Any] | None = None,
    titles: Mapping[Any, str] | None = None,
    y: str = "accuracy",
    hue: str = "method",
    ylabel: str = "reward accuracy on clean test pairs (fraction)",
    sharey: bool = True,
) -> Figure:
    """:func:`plot_accuracy_vs_noise` once per value of ``panel`` (e.g. low- and high-margin pairs).

    Args:
        results: one row per run and panel value (columns noise, seed, ``y``, ``hue``, ``panel``).
        panels: the panel values, left to right (default: order of first appearance).
        titles: a title per panel value (default: "panel = value").
        ylabel: the y-axis label of the first panel, with units.
        sharey: one y-scale for every panel.

    Returns:
        The figure; one axes per panel, each as :func:`plot_accuracy_vs_noise` draws it; the legend
        only beside the last.
    """
    require_columns(results, {panel, y, hue, "noise"}, "results")
    values = list(panels) if panels is not None else list(dict.fromkeys(results[panel]))
    with house_style():
        fig, axes = plt.subplots(1, len(values), figsize=(4.4 * len(values) + 2.4, 3.9), sharey=sharey)
        for index, (ax, value) in enumerate(zip(np.atleast_1d(axes), values)):
            plot_accuracy_vs_noise(results[results[panel] == value], y=y, hue=hue, ylabel=ylabel, ax=ax)
            ax.set_title((titles or {}).get(value, f"{panel} = {value}"))
            if index:
                ax.set_ylabel("")
            if index < len(values) - 1:
                ax.get_legend().remove()
        return _finish(fig)


def plot_audit(pairs: pd.DataFrame, languages: pd.DataFrame | None = None, *, threshold: float | None = None):
    """The audit's figure (``capo audit``, chapter 8): confidence per language (box plots, the share
    flagged in the labels, the flag's threshold as a dotted line); ROC curves per language beside it
    when the pairs carry ``truth``. ``pairs`` and ``languages`` as :class:`capo_tutorial.audit.AuditResult`
    holds them. Returns the Figure."""
    from capo_tutorial.audit import language_table, roc_curve  # the audit imports this module too

    languages = language_table(pairs) if languages is None else languages
    table = languages[languages.language != "all"].set_index("language")
    order = list(table.index)
    with_truth = "truth" in pairs and bool(pairs.truth.any())
    with house_style():
        fig, axes = plt.subplots(
            1, 2 if with_truth else 1, figsize=(11 if with_truth else 6, 4), squeeze=False
        )
        ax = axes[0, 0]
        data = [pairs.confidence[pairs.language == name].to_numpy() for name in order]
        ax.boxplot(data, orientation="horizontal", showfliers=False)
        ax.set_yticks(range(1, len(order) + 1))
        ax.set_yticklabels(
            [f"{name} · {table.script[name]}  ({table.flagged_share[name]:.0%})" for name in order]
        )
        ax.set_xlabel(r"confidence $c = \sigma(d_\mathrm{ref} / \tau)$")
        ax.set_title("confidence per language (share flagged)")
        ax.set_xlim(0, 1)
        if threshold is not None:
            ax.axvline(threshold, color="grey", linestyle=":", linewidth=1)
        if with_truth:
            ax = axes[0, 1]
            for name in order:
                rows = pairs[pairs.language == name]
                if rows.truth.any() and not rows.truth.all():
                    fpr, tpr = roc_curve(-rows.reference_margin.to_numpy(), rows.truth.to_numpy())
                    ax.plot(fpr, tpr, label=f"{name} ({table.auroc[name]:.2f})")
            ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
            ax.set_xlabel("false positive rate (clean pairs flagged)")
            ax.set_ylabel("true positive rate (wrong labels found)")
            ax.set_title("ROC per language (AUROC)")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize="small", loc="lower right")
        fig.tight_layout()
    plt.close(fig)  # the caller shows or saves it; no duplicate display in notebooks
    return fig

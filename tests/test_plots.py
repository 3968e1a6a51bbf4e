"""The book's figures: labelled axes, the expected series, and data equal to the package's numbers."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure

from capo_tutorial import metrics, plots


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def data_lines(ax):
    """The lines that carry data (helper lines and legend proxies have labels starting with '_')."""
    return [line for line in ax.lines if not line.get_label().startswith("_")]


def line_by_label(ax, label):
    matches = [line for line in ax.lines if line.get_label() == label]
    assert len(matches) == 1, (
        f"expected one line labelled {label!r}, got {[other.get_label() for other in ax.lines]}"
    )
    return matches[0]


def sigmoid(x):
    return 1 / (1 + np.exp(-np.asarray(x, dtype=float)))


# --- loss and gradient against the margin ----------------------------------------------------------


def test_default_losses_cover_every_pairwise_loss_in_the_package():
    from capo_tutorial.losses import LOSSES

    drawn = {name for name, _, _ in plots.DEFAULT_LOSSES}
    assert drawn == set(LOSSES) - {"sft"}, "sft is a warm-up loss on the chosen response, not pairwise"


def test_loss_curves_match_closed_forms():
    margins = torch.linspace(-5, 5, 21)
    frame = plots.loss_curves(
        [("dpo", {}), ("ipo", {}), ("simpo", {"target_margin": 0.5}), ("hinge", {})], margins, beta=1.0
    )
    assert list(frame.columns) == ["label", "name", "margin", "loss", "gradient", "weight"]
    m = margins.numpy()
    by = {label: rows for label, rows in frame.groupby("label", sort=False)}
    np.testing.assert_allclose(by["dpo"].loss, -np.log(sigmoid(m)), rtol=1e-5)
    np.testing.assert_allclose(by["dpo"].gradient, -sigmoid(-m), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(by["ipo"].loss, (m - 0.5) ** 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by["ipo"].gradient, 2 * (m - 0.5), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by["simpo (target_margin=0.5)"].loss, -np.log(sigmoid(m - 0.5)), rtol=1e-5)
    np.testing.assert_allclose(by["hinge"].loss, np.maximum(0, 1 - m), atol=1e-6)


def test_ipo_in_margin_units_scales_with_one_over_beta_squared():
    margins = torch.tensor([-1.0, 0.0, 2.0])
    frame = plots.loss_curves([("ipo", {})], margins, beta=0.1)
    np.testing.assert_allclose(frame.loss, (margins.numpy() - 0.5) ** 2 / 0.01, rtol=1e-4)


def test_loss_curves_reject_a_malformed_spec():
    with pytest.raises(ValueError, match="name, params"):
        plots.loss_curves([("dpo",)])


def test_plot_loss_and_gradient_draws_every_loss_with_the_package_gradient():
    fig = plots.plot_loss_and_gradient()
    assert isinstance(fig, Figure)
    loss_ax, grad_ax = fig.axes[:2]
    labels = [label for _, _, label in plots.DEFAULT_LOSSES]
    assert [line.get_label() for line in data_lines(loss_ax)] == labels
    assert [line.get_label() for line in data_lines(grad_ax)] == labels
    assert loss_ax.get_xlabel() == "margin m = r_w − r_l (nats)"
    assert "nats" in loss_ax.get_ylabel()
    assert grad_ax.get_ylabel().startswith("gradient dℓ/dm")

    dpo = line_by_label(grad_ax, "dpo")
    np.testing.assert_allclose(dpo.get_ydata(), -sigmoid(-dpo.get_xdata()), rtol=1e-5, atol=1e-7)
    capo = line_by_label(grad_ax, "capo (γ=1, τ=1)")
    m = capo.get_xdata()
    # The generalized cross-entropy identity: CAPO (sigmoid, tau 1, unnormalised) has
    # dl/dm = -sigmoid(m)**gamma * sigmoid(-m).
    np.testing.assert_allclose(capo.get_ydata(), -sigmoid(m) * sigmoid(-m), rtol=1e-4, atol=1e-7)
    legend = [text.get_text() for text in grad_ax.get_legend().get_texts()]
    assert legend == labels


# --- CAPO weights --------------------------------------------------------------------------------


def test_plot_weight_vs_margin_has_a_panel_per_source_and_a_line_per_gamma():
    gammas = [0.0, 1.0, 2.0]
    sources = ["sigmoid", "batch", "reference", "policy"]
    fig = plots.plot_weight_vs_margin(
        gammas, sources, tau={"sigmoid": 1.0, "batch": 1.0, "reference": 0.5, "policy": 2.0}
    )
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == len(sources)
    for ax in panels:
        assert [line.get_label() for line in data_lines(ax)] == ["γ = 0", "γ = 1", "γ = 2"]
        assert "weight" in ax.get_ylabel()
        np.testing.assert_allclose(line_by_label(ax, "γ = 0").get_ydata(), 1.0)
    sigmoid_ax, batch_ax, reference_ax, policy_ax = panels
    assert sigmoid_ax.get_xlabel() == "implicit margin m (nats)"
    assert "nats/token" in reference_ax.get_xlabel() and "nats/token" in policy_ax.get_xlabel()
    line = line_by_label(reference_ax, "γ = 2")
    np.testing.assert_allclose(line.get_ydata(), sigmoid(line.get_xdata() / 0.5) ** 2, rtol=1e-4, atol=1e-7)
    line = line_by_label(policy_ax, "γ = 1")
    np.testing.assert_allclose(line.get_ydata(), sigmoid(line.get_xdata() / 2.0), rtol=1e-4, atol=1e-7)
    line = line_by_label(batch_ax, "γ = 1")  # x is already standardised over the batch
    np.testing.assert_allclose(line.get_ydata(), sigmoid(line.get_xdata()), rtol=1e-4, atol=1e-6)


def test_plot_weight_vs_margin_hides_unused_panels_and_rejects_callables():
    fig = plots.plot_weight_vs_margin([1.0], ["sigmoid", "batch", "reference"])
    assert sum(ax.get_visible() for ax in fig.axes) == 3
    with pytest.raises(ValueError, match="built-in sources"):
        plots.plot_weight_vs_margin([1.0], ["nonsense"])


# --- chapter 1 figures ---------------------------------------------------------------------------


def test_plot_beta_effect_push_is_beta_sigmoid():
    betas = [0.1, 1.0]
    fig = plots.plot_beta_effect(betas)
    loss_ax, push_ax = fig.axes
    assert push_ax.get_yscale() == "log"
    assert "nats" in loss_ax.get_xlabel() and "nats" in loss_ax.get_ylabel()
    for beta in betas:
        push = line_by_label(push_ax, f"β = {beta:g}")
        delta = push.get_xdata()
        np.testing.assert_allclose(push.get_ydata(), beta * sigmoid(-beta * delta), rtol=1e-4, atol=1e-9)
        loss = line_by_label(loss_ax, f"β = {beta:g}")
        np.testing.assert_allclose(loss.get_ydata(), -np.log(sigmoid(beta * delta)), rtol=1e-4, atol=1e-9)


def test_plot_tilted_policy_bars_are_the_closed_form_optimum():
    rewards, reference = [2.0, 0.0, -1.0], [0.2, 0.5, 0.3]
    fig = plots.plot_tilted_policy(rewards, reference, betas=[0.5, 2.0])
    ax = fig.axes[0]
    assert ax.get_ylabel() == "probability π(y | x)"
    assert "nats" in ax.get_xlabel()
    heights = [[bar.get_height() for bar in container] for container in ax.containers]
    assert len(heights) == 3
    np.testing.assert_allclose(heights[0], reference, rtol=1e-6)
    for beta, bars in zip([0.5, 2.0], heights[1:]):
        expected = np.array(reference) * np.exp(np.array(rewards) / beta)
        np.testing.assert_allclose(bars, expected / expected.sum(), rtol=1e-6)


def test_plot_tilted_policy_validates_its_inputs():
    with pytest.raises(ValueError, match="one entry per response"):
        plots.plot_tilted_policy([1.0, 2.0], [0.5])
    with pytest.raises(ValueError, match="> 0"):
        plots.plot_tilted_policy([1.0, 2.0], [1.0, 0.0])


# --- experiment figures ---------------------------------------------------------------------------


def noise_results():
    rows = []
    for method, slope in [("dpo", 0.8), ("capo reference", 0.3)]:
        for noise in [0.0, 0.2, 0.4]:
            for seed in range(3):
                rows.append(
                    {
                        "method": method,
                        "noise": noise,
                        "seed": seed,
                        "accuracy": 0.95 - slope * noise + 0.01 * seed,
                    }
                )
    return pd.DataFrame(rows)


def test_plot_accuracy_vs_noise_draws_mean_and_spread_per_method():
    results = noise_results()
    fig = plots.plot_accuracy_vs_noise(results, baselines={"reference alone": 0.86})
    ax = fig.axes[0]
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in containers] == ["dpo", "capo reference"]
    means = results.groupby(["method", "noise"]).accuracy.mean()
    for container in containers:
        data_line = container.lines[0]
        np.testing.assert_allclose(data_line.get_ydata(), means[container.get_label()].to_numpy())
    assert line_by_label(ax, "reference alone").get_ydata()[0] == pytest.approx(0.86)
    assert ax.get_xlabel() == "training labels flipped (%)"
    assert "reward accuracy" in ax.get_ylabel()
    assert ax.xaxis.get_major_formatter()(0.2, 0) == "20%"


def test_plot_accuracy_vs_noise_names_missing_columns():
    with pytest.raises(ValueError, match="accuracy"):
        plots.plot_accuracy_vs_noise(noise_results().drop(columns="accuracy"))


def trl_history():
    rows = []
    for method in ["dpo", "capo"]:
        for step in range(0, 50, 10):
            rows.append(
                {
                    "method": method,
                    "step": step,
                    "loss": 0.69 - step / 100 - (0.1 if method == "capo" else 0.0),
                    "rewards/accuracies": step / 50,
                    "rewards/margins": step / 10,
                }
            )
    return pd.DataFrame(rows)


def test_plot_training_curves_uses_trl_metric_names_and_units():
    history = trl_history()
    fig = plots.plot_training_curves(history, hue="method")
    assert len(fig.axes) == 3
    assert [ax.get_ylabel() for ax in fig.axes] == [
        "loss (nats)",
        "reward accuracy (fraction)",
        "reward margin (nats)",
    ]
    assert all(ax.get_xlabel() == "optimizer step" for ax in fig.axes)
    loss_ax = fig.axes[0]
    drawn = [tuple(np.round(line.get_ydata(), 6)) for line in loss_ax.lines]
    for method, rows in history.groupby("method"):
        assert tuple(np.round(rows.loss.to_numpy(), 6)) in drawn, f"{method}'s loss curve is not drawn"
    legend = [text.get_text() for text in fig.axes[-1].get_legend().get_texts()]
    assert "dpo" in legend and "capo" in legend


def test_plot_training_curves_custom_metric_label_and_missing_column():
    history = trl_history().rename(columns={"rewards/margins": "flipped weight"})
    fig = plots.plot_training_curves(
        history, ["flipped weight"], labels={"flipped weight": "weight (mean 1)"}
    )
    assert fig.axes[0].get_ylabel() == "weight (mean 1)"
    with pytest.raises(ValueError, match="rewards/margins"):
        plots.plot_training_curves(history)


def test_plot_per_language_bars_follow_the_summary_table():
    rng = np.random.default_rng(0)
    languages = rng.choice(["de", "hi", "ja"], 300)
    chosen, rejected = rng.normal(1, 1, 300), rng.normal(0, 1, 300)
    dpo = metrics.per_language_summary(languages, chosen, rejected)
    capo = metrics.per_language_summary(languages, chosen + 0.5, rejected)
    fig = plots.plot_per_language({"dpo": dpo, "capo": capo})
    ax = fig.axes[0]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["de", "hi", "ja", "all"]
    bars = [container for container in ax.containers if isinstance(container, BarContainer)]
    assert [container.get_label() for container in bars] == ["dpo", "capo"]
    for container, table in zip(bars, [dpo, capo]):
        heights = [bar.get_height() for bar in container.patches]
        np.testing.assert_allclose(heights, table.loc[["de", "hi", "ja", "all"], "accuracy"])
    assert "reward accuracy" in ax.get_ylabel() and ax.get_xlabel() == "language"


def test_plot_reliability_plots_the_calibration_table():
    margins = np.random.default_rng(1).normal(1.0, 2.0, 500)
    table = metrics.calibration_table(margins)
    fig = plots.plot_reliability({"dpo": table})
    ax = fig.axes[0]
    line = line_by_label(ax, "dpo")
    np.testing.assert_allclose(line.get_xdata(), table.mean_confidence)
    np.testing.assert_allclose(line.get_ydata(), table.accuracy)
    assert "probability" in ax.get_xlabel() and "frequency" in ax.get_ylabel()


# --- style and colours -----------------------------------------------------------------------------


def test_method_palette_keeps_baseline_colours_fixed_and_all_colours_distinct():
    first = plots.method_palette(["dpo", "capo sigmoid", "capo reference"])
    second = plots.method_palette(["rdpo (ε=0.1)", "capo (γ=1)", "dpo", "cdpo"])
    assert first["dpo"] == second["dpo"]
    for palette in (first, second):
        assert len(set(palette.values())) == len(palette)


def test_single_panel_functions_draw_into_a_given_axes():
    fig, ax = plt.subplots()
    returned = plots.plot_accuracy_vs_noise(noise_results(), ax=ax)
    assert returned is fig


def test_house_style_restores_the_settings_it_changes():
    before = {key: matplotlib.rcParams[key] for key in ("axes.spines.top", "legend.frameon", "backend")}
    plots.plot_loss_and_gradient([("dpo", {})])
    after = {key: matplotlib.rcParams[key] for key in before}
    assert after == before


# --- chapter 3: multilingual data ------------------------------------------------------------------


def fertility_table(scale=1.0):
    return pd.DataFrame(
        {
            "language": ["en", "ru", "th"],
            "script": ["Latn", "Cyrl", "Thai"],
            "rows": [4, 4, 4],
            "mean_chars": [60.0, 55.0, 50.0],
            "mean_tokens": [30.0 * scale, 35.0 * scale, 45.0 * scale],
            "tokens_per_char": [0.5 * scale, 0.64 * scale, 0.9 * scale],
            "bytes_per_char": [1.0, 1.8, 2.6],
        }
    )


def bar_widths(ax):
    return {
        container.get_label(): [bar.get_width() for bar in container.patches] for container in ax.containers
    }


def test_plot_tokenizer_fertility_one_tokenizer_colours_by_script():
    table = fertility_table()
    fig = plots.plot_tokenizer_fertility(table.iloc[::-1])
    tokens_ax, fertility_ax = fig.axes[:2]
    ticks = [tick.get_text() for tick in tokens_ax.get_yticklabels()]
    assert ticks == ["en · Latn", "ru · Cyrl", "th · Thai"]  # fewest tokens per pair first
    assert tokens_ax.get_xlabel().startswith("tokens per pair")
    assert fertility_ax.get_xlabel().startswith("tokens per character")
    for ax, column in ((tokens_ax, "mean_tokens"), (fertility_ax, "tokens_per_char")):
        widths = bar_widths(ax)
        assert list(widths) == ["Latn", "Cyrl", "Thai"]  # one container per script
        np.testing.assert_allclose([bars[0] for bars in widths.values()], table[column])
    assert fertility_ax.get_legend().get_title().get_text() == "script"


def test_plot_tokenizer_fertility_compares_tokenizers_in_a_given_order():
    fig = plots.plot_tokenizer_fertility(
        {"small": fertility_table(), "large": fertility_table(0.5)}, order=["th", "en", "ru"]
    )
    tokens_ax = fig.axes[0]
    ticks = [tick.get_text() for tick in tokens_ax.get_yticklabels()]
    assert ticks == ["th · Thai", "en · Latn", "ru · Cyrl"]
    widths = bar_widths(tokens_ax)
    np.testing.assert_allclose(widths["small"], [45.0, 30.0, 35.0])
    np.testing.assert_allclose(widths["large"], [22.5, 15.0, 17.5])
    with pytest.raises(ValueError, match="tokens_per_char"):
        plots.plot_tokenizer_fertility(fertility_table().drop(columns="tokens_per_char"))


def test_plot_label_noise_stacks_realised_flips_and_marks_the_asked_rate():
    from capo_tutorial.testbed import make_testbed, testbed_card

    arguments = dict(languages=["en", "tr", "bn"], n_train=300, n_validation=0, n_test=30, seed=0)
    arguments |= dict(noise={"en": 0.1, "tr": 0.2, "bn": 0.3}, systematic=["tr"])
    card = testbed_card(make_testbed(**arguments), **arguments)
    fig = plots.plot_label_noise(card["languages"])
    ax = fig.axes[0]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["en", "tr", "bn"]
    random_bars, systematic_bars = ax.containers
    assert (random_bars.get_label(), systematic_bars.get_label()) == ("random flips", "systematic flips")
    random_rates = [row["noise_random_realised"] for row in card["languages"]]
    systematic_rates = [row["noise_systematic_realised"] for row in card["languages"]]
    np.testing.assert_allclose([bar.get_height() for bar in random_bars], random_rates)
    np.testing.assert_allclose([bar.get_height() for bar in systematic_bars], systematic_rates)
    np.testing.assert_allclose([bar.get_y() for bar in systematic_bars], random_rates)  # stacked
    assert systematic_bars[1].get_height() > 0 and systematic_bars[0].get_height() == 0  # only tr
    np.testing.assert_allclose(line_by_label(ax, "asked rate").get_ydata(), [0.1, 0.2, 0.3])
    assert ax.get_ylabel() == "train labels flipped (%)" and "resource" in ax.get_xlabel()
    with pytest.raises(ValueError, match="noise_asked"):
        plots.plot_label_noise(pd.DataFrame({"language": ["en"]}))


def test_plot_padding_fraction_draws_the_mean_per_strategy_on_a_log2_axis():
    from capo_tutorial.data import LengthGroupedBatchSampler, padding_fraction

    lengths = np.random.default_rng(0).integers(5, 60, 256)
    rows = []
    for batch_size in (4, 16, 64):
        for seed in range(2):
            order = np.random.default_rng(seed).permutation(len(lengths))
            random_batches = [order[i : i + batch_size] for i in range(0, len(lengths), batch_size)]
            grouped = LengthGroupedBatchSampler(lengths, batch_size, seed=seed).batches()
            for name, batches in (("random", random_batches), ("length-grouped", grouped)):
                rows.append(
                    {
                        "batching": name,
                        "batch_size": batch_size,
                        "seed": seed,
                        "padding": padding_fraction(batches, lengths),
                    }
                )
    results = pd.DataFrame(rows)
    fig = plots.plot_padding_fraction(results)
    ax = fig.axes[0]
    means = results.groupby(["batching", "batch_size"]).padding.mean()
    for name in ("random", "length-grouped"):
        line = line_by_label(ax, name)
        np.testing.assert_allclose(line.get_xdata(), [4, 16, 64])
        np.testing.assert_allclose(line.get_ydata(), means[name].to_numpy())
    grouped, random = line_by_label(ax, "length-grouped"), line_by_label(ax, "random")
    assert random.get_ydata().min() > grouped.get_ydata().max()
    assert ax.get_xscale() == "log" and "batch size" in ax.get_xlabel() and "padding" in ax.get_ylabel()
    with pytest.raises(ValueError, match="padding"):
        plots.plot_padding_fraction(results.drop(columns="padding"))


# --- chapter 4: training runs ----------------------------------------------------------------------


def weight_history():
    rows = []
    for method, spread in [("dpo", 0.0), ("capo", 0.5)]:
        for step in range(10, 60, 10):
            rows.append(
                {
                    "method": method,
                    "stage": "preference",
                    "step": step,
                    "weights/mean": 1.0,
                    "weights/min": 1.0 - spread,
                    "weights/max": 1.0 + spread + step / 100,
                }
            )
        rows.append({"method": method, "stage": "preference", "step": 50, "eval_rewards/accuracies": 0.7})
    return pd.DataFrame(rows)


def test_plot_weight_statistics_draws_the_mean_and_a_min_max_band_per_run():
    history = weight_history()
    fig = plots.plot_weight_statistics(history)
    ax = fig.axes[0]
    assert [line.get_label() for line in data_lines(ax)] == ["dpo", "capo"]
    capo = history[(history.method == "capo")].dropna(subset=["weights/max"])
    np.testing.assert_allclose(line_by_label(ax, "capo").get_xdata(), capo.step)
    np.testing.assert_allclose(line_by_label(ax, "capo").get_ydata(), capo["weights/mean"])
    assert len(ax.collections) == 2  # one band per run
    band = ax.collections[1].get_paths()[0].vertices
    assert band[:, 1].min() == pytest.approx(capo["weights/min"].min())
    assert band[:, 1].max() == pytest.approx(capo["weights/max"].max())
    assert ax.get_xlabel() == "optimizer step" and "weight" in ax.get_ylabel()
    assert "dimensionless" in ax.get_ylabel()
    with pytest.raises(ValueError, match="weights/min"):
        plots.plot_weight_statistics(history.drop(columns="weights/min"))


def flipped_table(seed=0, n=400, share=0.2):
    rng = np.random.default_rng(seed)
    flipped = rng.random(n) < share
    weight = np.where(flipped, rng.uniform(0.0, 0.5, n), rng.uniform(0.3, 1.0, n))
    correct = np.where(flipped, rng.random(n) < 0.3, rng.random(n) < 0.9)
    return pd.DataFrame({"weight": weight, "flipped": flipped, "correct": correct})


def test_plot_weight_by_label_normalises_each_group_to_100_percent():
    table = flipped_table()
    edges = np.linspace(0, 1, 11)
    fig = plots.plot_weight_by_label(table, bins=edges)
    ax = fig.axes[0]
    containers = [c for c in ax.containers if isinstance(c, BarContainer)]
    counts = table.flipped.value_counts()
    assert [c.get_label() for c in containers] == [
        f"clean label (n = {counts[False]})",
        f"flipped label (n = {counts[True]})",
    ]
    for container, is_flipped in zip(containers, [False, True]):
        heights = np.array([bar.get_height() for bar in container.patches])
        expected, _ = np.histogram(table.weight[table.flipped == is_flipped], bins=edges)
        np.testing.assert_allclose(heights, 100 * expected / expected.sum())
    assert "dimensionless" in ax.get_xlabel() and "%" in ax.get_ylabel()
    with pytest.raises(ValueError, match="flipped"):
        plots.plot_weight_by_label(table.drop(columns="flipped"))


def test_plot_label_agreement_bars_are_shares_with_wilson_intervals():
    dpo, capo = flipped_table(1), flipped_table(2)
    fig = plots.plot_label_agreement({"dpo": dpo, "capo": capo})
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in bars] == ["dpo", "capo"]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["clean label", "flipped label"]
    for container, table in zip(bars, [dpo, capo]):
        heights = [bar.get_height() for bar in container.patches]
        expected = [100 * table.correct[table.flipped == value].mean() for value in (False, True)]
        np.testing.assert_allclose(heights, expected)
    flipped_rows = capo[capo.flipped]
    low, high = metrics.wilson_interval(int(flipped_rows.correct.sum()), len(flipped_rows))
    error_bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)][1]
    segment = error_bars.lines[2][0].get_segments()[1]  # capo's bar over the flipped pairs
    np.testing.assert_allclose(segment[:, 1], [100 * low, 100 * high])
    assert ax.get_ylabel() == "training pairs ranked as labelled (%)"
    with pytest.raises(ValueError, match="correct"):
        plots.plot_label_agreement({"dpo": dpo.drop(columns="correct")})


def test_plot_label_agreement_leaves_an_empty_group_blank():
    clean_only = flipped_table().assign(flipped=False)
    fig = plots.plot_label_agreement({"dpo": clean_only})
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, BarContainer)]
    heights = [bar.get_height() for bar in bars.patches]
    assert heights[0] == pytest.approx(100 * clean_only.correct.mean()) and np.isnan(heights[1])


# --- chapters 5 and 6: experiment grids ------------------------------------------------------------


def grid_rows(methods=("dpo", "capo"), seeds=(0, 1, 2), noises=(0.0, 0.2), languages=("en", "ru", "all")):
    """Tidy rows like a grid's results.csv: one per run x language (margin class 'all')."""
    rows = []
    for method in methods:
        for seed in seeds:
            for noise in noises:
                for index, language in enumerate(languages):
                    accuracy = (
                        0.9 - noise / 2 + 0.01 * seed + 0.02 * index + (0.03 if method == "capo" else 0)
                    )
                    rows.append(
                        {
                            "method": method,
                            "seed": seed,
                            "noise": noise,
                            "language": language,
                            "margin_class": "all",
                            "accuracy": accuracy,
                            "margin": 10 * accuracy,
                        }
                    )
    return pd.DataFrame(rows)


def bar_containers(ax):
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def test_plot_metric_by_language_bars_are_seed_means_with_the_chosen_spread():
    runs = grid_rows(noises=(0.2,))
    runs = runs[~((runs.method == "dpo") & (runs.language == "ru") & (runs.seed == 2))]  # a missing seed
    fig = plots.plot_metric_by_language(runs, spread="range")
    ax = fig.axes[0]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["en", "ru", "all"]  # pooled last
    containers = bar_containers(ax)
    assert [c.get_label() for c in containers] == ["dpo", "capo"]
    means = runs.groupby(["method", "language"]).accuracy.mean()
    for container in containers:
        expected = means[container.get_label()].reindex(["en", "ru", "all"]).to_numpy()
        np.testing.assert_allclose([bar.get_height() for bar in container], expected)
    # range: the error bar of dpo/ru spans the two seeds left, 0.01 apart
    errorbars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    segments = errorbars[0].lines[2][0].get_segments()
    ru = runs[(runs.method == "dpo") & (runs.language == "ru")].accuracy
    assert segments[1][:, 1] == pytest.approx([ru.min(), ru.max()])
    dots = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection))
    assert dots == len(runs), "one dot per seed and cell"
    assert "reward accuracy" in ax.get_ylabel() and "fraction" in ax.get_ylabel()
    with pytest.raises(ValueError, match="spread"):
        plots.plot_metric_by_language(runs, spread="iqr")
    with pytest.raises(ValueError, match="seed"):
        plots.plot_metric_by_language(runs.drop(columns="seed"))


def test_plot_metric_by_language_takes_another_metric_and_label():
    runs = grid_rows(noises=(0.2,))
    fig = plots.plot_metric_by_language(runs, y="margin", ylabel="reward margin (nats)", chance=None)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "reward margin (nats)"
    capo = bar_containers(ax)[1]
    expected = runs[runs.method == "capo"].groupby("language").margin.mean().reindex(["en", "ru", "all"])
    np.testing.assert_allclose([bar.get_height() for bar in capo], expected.to_numpy())


def test_plot_paired_differences_draws_the_mean_difference_per_method_and_noise():
    from capo_tutorial.analysis import paired_differences

    runs = grid_rows(methods=("dpo", "capo", "rdpo"))
    runs.loc[runs.method == "rdpo", "accuracy"] -= 0.05
    differences = paired_differences(runs[runs.language == "all"])
    fig = plots.plot_paired_differences(differences)
    ax = fig.axes[0]
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["capo", "rdpo"]
    containers = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in containers] == ["0% flipped", "20% flipped"]
    for container in containers:
        np.testing.assert_allclose(container.lines[0].get_ydata(), [3.0, -5.0], atol=1e-9)  # points
    assert "points" in ax.get_ylabel()
    single = plots.plot_paired_differences(differences, hue=None).axes[0]
    (container,) = [c for c in single.containers if isinstance(c, ErrorbarContainer)]
    assert container.get_label().startswith("mean")
    with pytest.raises(ValueError, match="difference"):
        plots.plot_paired_differences(differences.drop(columns="difference"))


def test_plot_paired_differences_can_show_the_paired_interval():
    from capo_tutorial.analysis import improvement_over_baseline, paired_differences

    runs = grid_rows(methods=("dpo", "capo"))
    runs = runs[runs.language == "all"]
    runs.loc[runs.method == "capo", "accuracy"] += 0.01 * runs.loc[runs.method == "capo", "seed"] ** 2
    fig = plots.plot_paired_differences(paired_differences(runs), spread="ci")
    table = improvement_over_baseline(runs).set_index("noise")
    containers = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    for container, noise in zip(containers, table.index, strict=True):
        ((bottom, top),) = [segment[:, 1] for segment in container.lines[2][0].get_segments()]
        assert (bottom, top) == (
            pytest.approx(table.loc[noise, "ci_low"]),
            pytest.approx(table.loc[noise, "ci_high"]),
        )
    assert "95% t-interval" in fig.axes[0].get_legend().get_title().get_text()


def test_plot_difference_heatmap_is_centred_and_annotated():
    table = pd.DataFrame({"en": [1.5, -3.0], "ru": [np.nan, 0.5]}, index=["capo", "rdpo"])
    fig = plots.plot_difference_heatmap(table)
    ax = fig.axes[0]
    texts = sorted(text.get_text() for text in ax.texts)
    assert texts == sorted(["+1.5", "-3.0", "+0.5"]), "one annotation per finite cell"
    mesh = ax.collections[0]
    assert mesh.norm.vmin == pytest.approx(-3.0) and mesh.norm.vmax == pytest.approx(3.0)
    assert fig.axes[1].get_ylabel() == "reward accuracy − DPO's (points)"  # the colour bar
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("language", "method")
    with pytest.raises(ValueError, match="finite"):
        plots.plot_difference_heatmap(pd.DataFrame({"en": [np.nan]}))


def test_plot_sweep_bars_variants_with_the_baseline_as_lines():
    runs = pd.DataFrame(
        {
            "method": ["dpo", "capo-a", "capo-b"] * 2,
            "noise": [0.2] * 3 + [0.4] * 3,
            "accuracy": [0.70, 0.75, 0.65, 0.60, 0.72, 0.50],
        }
    )
    fig = plots.plot_sweep(runs, highlight="capo-a")
    ax = fig.axes[0]
    assert [tick.get_text() for tick in ax.get_yticklabels()] == ["capo-a", "capo-b"]
    containers = bar_containers(ax)
    assert [c.get_label() for c in containers] == ["20% flipped", "40% flipped"]
    np.testing.assert_allclose([bar.get_width() for bar in containers[1]], [0.72, 0.50])
    assert line_by_label(ax, "dpo, 40% flipped").get_xdata()[0] == pytest.approx(0.60)
    assert ax.get_yticklabels()[0].get_fontweight() == "bold"
    assert "validation" in ax.get_xlabel()


def test_plot_noise_panels_draws_one_noise_plot_per_panel():
    runs = pd.concat([grid_rows().assign(margin_class=m) for m in ("low", "high")])
    runs = runs[runs.language == "all"]
    runs.loc[runs.margin_class == "low", "accuracy"] -= 0.1
    fig = plots.plot_noise_panels(runs, titles={"low": "near misses", "high": "clear errors"})
    assert [ax.get_title() for ax in fig.axes] == ["near misses", "clear errors"]
    assert fig.axes[0].get_legend() is None and fig.axes[1].get_legend() is not None
    for ax, margin_class in zip(fig.axes, ("low", "high")):
        (dpo,) = [c for c in ax.containers if c.get_label() == "dpo"]
        expected = runs[(runs.margin_class == margin_class) & (runs.method == "dpo")]
        np.testing.assert_allclose(dpo.lines[0].get_ydata(), expected.groupby("noise").accuracy.mean())
    with pytest.raises(ValueError, match="margin_class"):
        plots.plot_noise_panels(runs.drop(columns="margin_class"))
